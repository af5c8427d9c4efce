"""One registry of salience methods, grouped by family in their own modules.

- ``activation``: ``cam``, ``scorecam`` (read the target layer's activations)
- ``gradient``: ``gradcam`` (default), ``gradcam++``, ``integrated_gradients``, ``smoothgrad``
- ``perturbation``: ``rise`` (black box)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from service.errors import BadInput, MethodUnavailable
from service.models.base import Model
from service.salience.base import SalienceResult

# A method computes the native map [N, h, w] (or input-size map) for given images and targets.
MethodFn = Callable[..., torch.Tensor]
_METHODS: dict[str, tuple[MethodFn, bool, dict[str, Any]]] = {}


def register(name: str, has_native: bool, defaults: dict[str, Any] | None = None) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = (fn, has_native, defaults or {})
        return fn

    return deco


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def method_defaults(name: str) -> dict[str, Any]:
    _ensure_loaded()
    return dict(_METHODS[name][2])


def _ensure_loaded() -> None:
    # Importing the family modules registers their methods.
    from service.salience import activation, gradient, perturbation  # noqa: F401


def resolve_target(model: Model, target: str | int) -> int | None:
    """None for 'predicted', else a class index (from an index or a class name)."""
    if target == "predicted":
        return None
    names = model.metadata.class_names or []
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise BadInput(f"target class {target!r} is not one of the model's classes {names}")
        return names.index(target)
    idx = int(target)
    if not 0 <= idx < model.n_classes:
        raise BadInput(f"target class index {idx} is out of range for a model with {model.n_classes} classes")
    return idx


def compute_salience(
    model: Model,
    images: torch.Tensor,
    method: str = "gradcam",
    target: str | int = "predicted",
    layer: str = "auto",
    params: dict[str, Any] | None = None,
    seeds: torch.Tensor | None = None,
) -> SalienceResult:
    """Salience of a batch of images [N, 3, H, W] in [0, 1].

    Raises:
        BadInput: unknown method, target or layer.
        MethodUnavailable: the model's capability table says the method cannot run, and why.
    """
    _ensure_loaded()
    if method not in _METHODS:
        raise BadInput(f"unknown salience method {method!r}; choose from {sorted(_METHODS)}")
    cap = model.capabilities.get(method)
    if cap is None or not cap.available:
        raise MethodUnavailable(cap.reason if cap else f"{method} is not available for this model")
    fn, has_native, defaults = _METHODS[method]
    unknown = set(params or {}) - set(defaults)
    if unknown:
        raise BadInput(f"unknown parameter(s) {sorted(unknown)} for {method}; known: {sorted(defaults)}")
    opts = {**defaults, **(params or {})}
    fixed = resolve_target(model, target)
    images = images.to(model.device, torch.float32)
    if seeds is None:
        seeds = torch.arange(len(images), dtype=torch.int64)
    elif len(seeds) != len(images):  # images stacked variant-major over the same batch
        seeds = seeds.repeat(len(images) // len(seeds) + 1)[: len(images)]
    resolved_layer = model.resolve_layer(layer) if has_native else None
    native, logits = fn(model, images, fixed=fixed, layer=resolved_layer, seeds=seeds.cpu(), **opts)
    native = torch.nan_to_num(native.float(), nan=0.0).clamp_min(0)
    predicted = model.predicted(logits)
    targets = predicted if fixed is None else torch.full_like(predicted, fixed)
    h, w = model.metadata.input_size
    if native.shape[-2:] == (h, w):
        upsampled = native
    else:
        upsampled = F.interpolate(native[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    scores = model.probabilities(logits).gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)
    return SalienceResult(
        native=native.detach(),
        upsampled=upsampled.detach().clamp_min(0),
        logits=logits.detach(),
        targets=targets,
        scores=scores.detach(),
        predicted=predicted,
        native_is_input_size=not has_native,
    )


def targets_for(model: Model, logits: torch.Tensor, fixed: int | None) -> torch.Tensor:
    predicted = model.predicted(logits)
    return predicted if fixed is None else torch.full_like(predicted, fixed)
