"""Seeded weight randomisation of a loaded model, in memory, for the sanity checks (``etm.measures.sanity``).

A *layer* is a parameterised module as PyTorch's ``reset_parameters`` knows it: a convolution, a linear layer
(for ONNX: ``Gemm``, or ``MatMul`` on an initializer) or a normalisation (batch, layer or group norm). Layers
are listed input to output, in the order the model defines them (``named_modules`` order for ``.pt2``, the
graph's node order for ONNX), which is the order Quantus 0.6 walks (``get_random_layer_generator``).

Re-initialisation follows Quantus exactly, so the randomised models are the same tensors: each layer gets a
fresh ``torch.Generator`` seeded with ``seed + 1`` (Quantus calls ``torch.manual_seed(seed + 1)`` before each
``module.reset_parameters()``), then PyTorch's default init: ``kaiming_uniform_(a=sqrt(5))`` for the weight and
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the bias of convolutions and linear layers; ones and zeros for norm
weights and biases, running mean 0 and variance 1. Values are drawn on the CPU in float32 (the same on every
device) and only then moved to the model's device.

``randomized(model, layers, seed)`` returns a new ``Model`` whose named layers are re-initialised; the original
is untouched and nothing is written to any store. ``.pt2``: a new GraphModule that shares every tensor but the
re-initialised ones. ONNX: a copy of the graph with the layers' initializers replaced, run by a new ONNX Runtime
session (exporters fold BatchNorm into the convolutions, so an ONNX graph may have fewer layers than its ``.pt2``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any

import torch

from etm.errors import BadInput
from etm.models.base import Model

_CONV = {"aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.convolution.default",
         "aten._convolution.default"}
_LINEAR = {"aten.linear.default"}
_NORM = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
         "aten.layer_norm.default", "aten.native_layer_norm.default", "aten.group_norm.default",
         "aten.native_group_norm.default"}


@dataclass(frozen=True)
class Layer:
    """One randomisable layer: its name, kind ("conv", "linear", "norm") and tensors by role.

    ``tensors``: role ("weight", "bias", "running_mean", "running_var") -> the tensor's name in the model
    (attribute path for ``.pt2``, initializer name for ONNX). ``transposed``: the weight is stored [in, out]
    (ONNX ``MatMul``, ``Gemm`` with transB=0), so it is drawn as [out, in] like PyTorch's and transposed.
    """

    name: str
    kind: str
    tensors: dict[str, str]
    transposed: bool = False


def reset_values(layer: Layer, shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """The re-initialised tensors of ``layer`` (role -> CPU float32 tensor), as PyTorch's ``reset_parameters``
    draws them after ``torch.manual_seed(seed + 1)``."""
    out: dict[str, torch.Tensor] = {}
    if layer.kind == "norm":
        for role, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            if role in layer.tensors:
                out[role] = torch.full(shapes[role], fill, dtype=torch.float32)
        return out
    g = torch.Generator().manual_seed(seed + 1)
    shape = shapes["weight"]
    drawn = (shape[1], shape[0], *shape[2:]) if layer.transposed else shape
    w = torch.empty(drawn, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    out["weight"] = w.transpose(0, 1).contiguous() if layer.transposed else w
    if "bias" in layer.tensors:
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(w)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        out["bias"] = torch.empty(shapes["bias"], dtype=torch.float32).uniform_(-bound, bound, generator=g)
    return out


def layers(model: Model) -> list[Layer]:
    """The model's randomisable layers, input to output (cached on the model)."""
    cached = getattr(model, "_etm_layers", None)
    if cached is None:
        cached = _onnx_layers(model) if model.format == "onnx" else _pt2_layers(model)
        object.__setattr__(model, "_etm_layers", cached)
    return list(cached)


def layer_names(model: Model) -> list[str]:
    return [layer.name for layer in layers(model)]


def require_layers(model: Model, what: str = "the model") -> list[Layer]:
    """``layers(model)``, or BadInput when there are none."""
    found = layers(model)
    if not found:
        raise BadInput(
            f"{what} has no layer whose weights can be randomised (no convolution, linear layer or normalisation "
            "with its weights in the graph), so the randomisation sanity checks (sanity.*) cannot run on it; "
            "drop the sanity measures for this candidate or upload a model whose weights are graph parameters"
        )
    return found


def _prefix(name: str) -> tuple[str, str]:
    head, _, role = name.rpartition(".")
    return head, role


def _pt2_layers(model: Any) -> list[Layer]:
    gm = model.gm
    users: dict[str, set[str]] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            users[str(n.target)] = {str(u.target) for u in n.users}
    groups: dict[str, dict[str, str]] = {}
    kinds: dict[str, str] = {}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:  # parameters first: their order is the modules' definition order
        module, role = _prefix(name)
        ops = users.get(name, set())
        kind = "conv" if ops & _CONV else "linear" if ops & _LINEAR else "norm" if ops & _NORM else None
        if role not in ("weight", "bias", "running_mean", "running_var"):
            continue
        if kind is None:
            if role.startswith("running") and module in kinds:
                groups[module][role] = name
            continue
        kinds.setdefault(module, kind)
        groups.setdefault(module, {})[role] = name
    return [Layer(m, kinds[m], t) for m, t in groups.items() if "weight" in t or kinds[m] == "norm"]


def _onnx_layers(model: Any) -> list[Layer]:
    import onnx

    proto = model.proto
    inits = {i.name: i for i in proto.graph.initializer}
    out: list[Layer] = []
    seen: set[str] = set()

    def trans_b(node: onnx.NodeProto) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "transB"), 0)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in proto.graph.node:
        ins = list(node.input)
        t: dict[str, str] = {}
        kind, transposed = "", False
        if node.op_type == "Conv" and len(ins) > 1 and ins[1] in inits:
            kind, t = "conv", {"weight": ins[1], **({"bias": ins[2]} if len(ins) > 2 and ins[2] in inits else {})}
        elif node.op_type == "Gemm" and len(ins) > 1 and ins[1] in inits and len(inits[ins[1]].dims) == 2:
            kind, transposed = "linear", not trans_b(node)
            t = {"weight": ins[1], **({"bias": ins[2]} if len(ins) > 2 and ins[2] in inits else {})}
        elif node.op_type == "MatMul" and len(ins) > 1 and ins[1] in inits and len(inits[ins[1]].dims) == 2:
            kind, transposed, t = "linear", True, {"weight": ins[1]}
            nxt = consumers.get(node.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":  # the bias of the exported linear layer
                other = [i for i in nxt[0].input if i != node.output[0]]
                if other and other[0] in inits and len(inits[other[0]].dims) == 1:
                    t["bias"] = other[0]
        elif node.op_type == "BatchNormalization" and all(i in inits for i in ins[1:5]):
            kind, t = "norm", dict(zip(("weight", "bias", "running_mean", "running_var"), ins[1:5], strict=True))
        elif node.op_type in ("LayerNormalization", "GroupNormalization") and len(ins) > 1 and ins[1] in inits:
            kind, t = "norm", {"weight": ins[1], **({"bias": ins[2]} if len(ins) > 2 and ins[2] in inits else {})}
        if not kind or t["weight"] in seen:
            continue
        seen.update(t.values())
        name = t["weight"].removesuffix(".weight") if t["weight"].endswith(".weight") else node.name or t["weight"]
        out.append(Layer(name, kind, t, transposed))
    return out


def randomized(model: Model, names: list[str] | tuple[str, ...], seed: int) -> Model:
    """A copy of ``model`` with the named layers re-initialised (see the module docstring); in memory only."""
    by_name = {layer.name: layer for layer in layers(model)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise BadInput(f"no layer named {unknown[0]!r} to randomise; the model's layers are {list(by_name)[:8]}...")
    chosen = [by_name[n] for n in names]
    return _onnx_randomized(model, chosen, seed) if model.format == "onnx" else _pt2_randomized(model, chosen, seed)


def _pt2_randomized(model: Any, chosen: list[Layer], seed: int) -> Model:
    gm = model.gm
    # A new GraphModule built from the old one shares its tensors (fx copies attribute references), so only the
    # re-initialised tensors take new memory and the original keeps its own.
    new = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    for layer in chosen:
        shapes = {role: tuple(new.get_parameter(n).shape) if _is_param(gm, n) else tuple(new.get_buffer(n).shape)
                  for role, n in layer.tensors.items()}
        for role, value in reset_values(layer, shapes, seed).items():
            target = layer.tensors[role]
            owner_path, _, attr = target.rpartition(".")
            owner = new.get_submodule(owner_path) if owner_path else new
            old = getattr(owner, attr)
            tensor = value.to(device=old.device, dtype=old.dtype)
            if isinstance(old, torch.nn.Parameter):
                setattr(owner, attr, torch.nn.Parameter(tensor, requires_grad=False))
            else:
                owner.register_buffer(attr, tensor)
    return dataclasses.replace(model, gm=new, _taps={}, _attention=None)


def _is_param(gm: torch.nn.Module, name: str) -> bool:
    try:
        gm.get_parameter(name)
    except AttributeError:
        return False
    return True


def _onnx_randomized(model: Any, chosen: list[Layer], seed: int) -> Model:
    import onnx
    from onnx import numpy_helper

    from etm.models.onnx_head import find_head

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = {i.name: i for i in proto.graph.initializer}
    for layer in chosen:
        shapes = {role: tuple(int(d) for d in inits[n].dims) for role, n in layer.tensors.items()}
        for role, value in reset_values(layer, shapes, seed).items():
            old = inits[layer.tensors[role]]
            dtype = numpy_helper.to_array(old).dtype
            old.CopyFrom(numpy_helper.from_array(value.numpy().astype(dtype), old.name))
    return dataclasses.replace(
        model, proto=proto, onnx_head=find_head(proto, model.output_name), _subgraphs={}, _sessions={},
        _lock=threading.Lock(), _head_info=None,
    )
