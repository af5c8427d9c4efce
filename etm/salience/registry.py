"""One registry of salience methods, grouped by family in their own modules.

- ``gradient``: ``gradcam`` (default), ``gradcam++``, ``integrated_gradients``, ``smoothgrad``
- ``activation``: ``cam``, ``scorecam`` (read the target layer's activations)
- ``perturbation``: ``rise`` (black box)
- ``attention``: ``rollout``, ``gradient_rollout`` (transformers: every block's attention)

The registry is the only list of methods: the spec's validation and its OpenAPI enum, the parameter checks
and the capability table read it. A method is one function and one ``register`` line, which declares its
parameters (``Param``), a title and, for a method outside the built-in capability table
(``etm.models.capabilities``), a ``capability`` check; plugins (``ETM_PLUGINS``, see ``etm.plugins``) register
theirs the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from etm.errors import BadInput
from etm.models.base import Model
from etm.models.compatibility import require_method, target_index
from etm.params import Param, shown
from etm.salience.base import SalienceResult

# A method computes the native map [N, h, w] (or input-size map) for given images and targets.
MethodFn = Callable[..., torch.Tensor]


# Whether a method can run on a model, and why (``available``, ``reason``): for methods that the built-in
# capability table does not know (plugins).
CapabilityFn = Callable[[Model], tuple[bool, str]]


@dataclass(frozen=True)
class Method:
    """A registered salience method: its function and what it says about itself.

    ``fn(model, images, *, fixed, layer, seeds, **params)`` returns ``(map [N, h, w], logits [N, C])``.
    ``has_native``: the map lives at the target layer's resolution (a layer is resolved for it); otherwise
    it is the input-size map. ``capability``: see ``CapabilityFn`` (None: the built-in table decides).
    """

    name: str
    fn: MethodFn
    has_native: bool
    params: dict[str, Param]
    title: str = ""
    capability: CapabilityFn | None = None


_METHODS: dict[str, Method] = {}


def register(
    name: str,
    has_native: bool,
    params: dict[str, Param] | None = None,
    title: str = "",
    capability: CapabilityFn | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register the decorated function as salience method ``name`` (see ``Method``)."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _METHODS and _METHODS[name].fn is not fn:
            raise ValueError(f"salience method {name!r} is registered already")
        _METHODS[name] = Method(name, fn, has_native, dict(params or {}), title or name, capability)
        return fn

    return deco


def method_names() -> list[str]:
    """The registered methods: the built-ins in their families' order (``gradcam``, the default, first), then the
    plugins' in registration order, however the imports were interleaved."""
    _ensure_loaded()
    order = list(_METHODS)  # registration order follows import order, which differs between processes

    def rank(name: str) -> tuple[int, int, int]:
        fn = _METHODS[name].fn
        family = fn.__module__.removeprefix(__package__ + ".")
        if fn.__module__.startswith(__package__ + ".") and family in _FAMILIES:  # a built-in: family, then file
            return (0, _FAMILIES.index(family), fn.__code__.co_firstlineno)
        return (1, 0, order.index(name))

    return sorted(order, key=rank)


def methods() -> dict[str, Method]:
    """Every registered method by name."""
    _ensure_loaded()
    return dict(_METHODS)


def method_params(name: str) -> dict[str, Param]:
    """The declared parameters of method ``name``."""
    _ensure_loaded()
    return dict(_METHODS[name].params)


def method_defaults(name: str) -> dict[str, Any]:
    return {k: p.default for k, p in method_params(name).items()}


def check_method_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` checked against method ``name``'s declaration; the full parameters (defaults filled in).

    Raises:
        BadInput: an unknown method or parameter name, or a value of the wrong type or out of range (the
            message names the parameter, what it may be and the value given).
    """
    _ensure_loaded()
    if name not in _METHODS:
        raise BadInput(f"unknown salience method {name!r}; choose from {sorted(_METHODS)}")
    declared = _METHODS[name].params
    params = params or {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise BadInput(f"unknown method_params {unknown} for {name}; known: {sorted(declared)}")
    bad = [
        f"{k} must be {p.allowed()}, got {shown(params[k])}"
        for k, p in declared.items()
        if k in params and not p.accepts(params[k])
    ]
    if bad:
        raise BadInput(f"bad method_params for {name}: " + "; ".join(bad))
    return {k: params.get(k, p.default) for k, p in declared.items()}


_FAMILIES = ("gradient", "activation", "perturbation", "attention")  # import order = registration order


def _ensure_loaded() -> None:
    # Importing the family modules registers their methods; then the plugins' (ETM_PLUGINS).
    from etm.plugins import load_plugins

    for family in _FAMILIES:
        importlib.import_module(f"etm.salience.{family}")
    load_plugins()


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
    fn, has_native = _METHODS[method].fn, _METHODS[method].has_native
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


def explain_targets(
    model: Model,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str = "gradcam",
    layer: str = "auto",
    params: dict[str, Any] | None = None,
    seeds: torch.Tensor | None = None,
) -> SalienceResult:
    """``compute_salience`` explaining a given class per image (``targets`` [N], model class indices), not the
    target rule: one call per distinct class, each image's result put back in its row. ``seeds`` are the images'."""
    t = targets.detach().cpu().long()
    if seeds is None or len(seeds) != len(images):
        seeds = torch.arange(len(images), dtype=torch.int64)
    parts: list[tuple[torch.Tensor, SalienceResult]] = []
    for c in torch.unique(t).tolist():
        idx = torch.nonzero(t == c).flatten()
        sub = images[idx.to(images.device)]
        parts.append((idx, compute_salience(model, sub, method, int(c), layer, params, seeds=seeds[idx])))
    first = parts[0][1]

    def gather(name: str) -> torch.Tensor:
        ref = getattr(first, name)
        out = torch.empty((len(images), *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
        for idx, res in parts:
            out[idx.to(ref.device)] = getattr(res, name)
        return out

    fields = ("native", "upsampled", "logits", "targets", "scores", "predicted")
    return SalienceResult(**{f: gather(f) for f in fields}, native_is_input_size=first.native_is_input_size)


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
