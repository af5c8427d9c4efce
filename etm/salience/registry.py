"""One registry of salience methods, grouped by family in their own modules.

- ``activation``: ``cam``, ``scorecam`` (read the target layer's activations)
- ``gradient``: ``gradcam`` (default), ``gradcam++``, ``integrated_gradients``, ``smoothgrad``
- ``perturbation``: ``rise`` (black box)
- ``attention``: ``rollout``, ``gradient_rollout`` (transformers: every block's attention)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from etm.errors import BadInput
from etm.models.base import Model
from etm.models.compatibility import require_method, target_index
from etm.salience.base import SalienceResult

# A method computes the native map [N, h, w] (or input-size map) for given images and targets.
MethodFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Param:
    """One parameter of a salience method, declared once: its default, its type and what it may be.

    ``kind`` is ``int`` (a JSON integer, not a boolean), ``float`` (any finite JSON number) or ``str``
    (one of ``choices``). Numbers lie in ``[lo, hi]``; ``lo_open`` excludes ``lo`` itself. ``nullable``
    also accepts JSON null (the method says what null means).
    """

    default: Any
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def allowed(self) -> str:
        return self._allowed() + (" or null" if self.nullable else "")

    def _allowed(self) -> str:
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = "an integer" if self.kind is int else "a number"
        lo = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        if self.lo is not None and self.hi is not None:
            return f"{what} {lo} and <= {self.hi:g}"
        return f"{what} {lo}" if self.lo is not None else what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # ints compare exactly, however large
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi


_METHODS: dict[str, tuple[MethodFn, bool, dict[str, Param]]] = {}


def register(name: str, has_native: bool, params: dict[str, Param] | None = None) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = (fn, has_native, params or {})
        return fn

    return deco


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def method_params(name: str) -> dict[str, Param]:
    """The declared parameters of method ``name``."""
    _ensure_loaded()
    return dict(_METHODS[name][2])


def method_defaults(name: str) -> dict[str, Any]:
    return {k: p.default for k, p in method_params(name).items()}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_method_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` checked against method ``name``'s declaration; the full parameters (defaults filled in).

    Raises:
        BadInput: an unknown method or parameter name, or a value of the wrong type or out of range (the
            message names the parameter, what it may be and the value given).
    """
    _ensure_loaded()
    if name not in _METHODS:
        raise BadInput(f"unknown salience method {name!r}; choose from {sorted(_METHODS)}")
    declared = _METHODS[name][2]
    params = params or {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise BadInput(f"unknown method_params {unknown} for {name}; known: {sorted(declared)}")
    bad = [
        f"{k} must be {p.allowed()}, got {_shown(params[k])}"
        for k, p in declared.items()
        if k in params and not p.accepts(params[k])
    ]
    if bad:
        raise BadInput(f"bad method_params for {name}: " + "; ".join(bad))
    return {k: params.get(k, p.default) for k, p in declared.items()}


def _ensure_loaded() -> None:
    # Importing the family modules registers their methods.
    from etm.salience import activation, attention, gradient, perturbation  # noqa: F401


def resolve_target(model: Model, target: str | int) -> int | None:
    """None for 'predicted', else a class index (from an index or a class name)."""
    return target_index(target, model.metadata.class_names or [], model.n_classes, "the model's")


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
    require_method(model.capabilities, method)
    fn, has_native, _ = _METHODS[method]
    opts = check_method_params(method, params)
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


def forward_only(model: Model, images: torch.Tensor, target: str | int = "predicted") -> SalienceResult:
    """The clean pass of a job whose measures need no map (accuracy only): logits, targets, scores and
    predictions from one forward pass, and 1x1 zero maps that no measure reads. No method runs, so none
    has to be available on the model."""
    fixed = resolve_target(model, target)
    logits = model.logits(images.to(model.device, torch.float32)).detach()
    predicted = model.predicted(logits)
    targets = predicted if fixed is None else torch.full_like(predicted, fixed)
    scores = model.probabilities(logits).gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)
    empty = torch.zeros(len(images), 1, 1, device=logits.device)
    return SalienceResult(
        native=empty, upsampled=empty, logits=logits, targets=targets, scores=scores, predicted=predicted
    )


def targets_for(model: Model, logits: torch.Tensor, fixed: int | None) -> torch.Tensor:
    predicted = model.predicted(logits)
    return predicted if fixed is None else torch.full_like(predicted, fixed)
