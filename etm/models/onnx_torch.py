"""ONNX operators as differentiable torch operations, for the part of a graph after the target layer.

ONNX Runtime has no autograd, so Grad-CAM on an ONNX graph differentiates only the nodes between the
target activation and the logits (``onnx_subgraph``), re-expressed here with their ONNX semantics
(opset 13 and newer, and the older attribute forms the legacy exporter writes). Integer tensors
(``Shape -> Gather -> Concat -> Reshape`` chains) are computed as torch integer tensors, so a head
whose reshapes depend on the batch size runs as it does in ONNX Runtime. An operator outside
``SUPPORTED`` makes the head unsupported; it is named in the capability table, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx
import torch
import torch.nn.functional as F
from onnx import helper

Value = torch.Tensor | None
Op = Callable[[onnx.NodeProto, list[Value], int], torch.Tensor | list[torch.Tensor]]

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _ints(v: Value) -> list[int]:
    assert v is not None
    return [int(i) for i in v.reshape(-1).tolist()]


def _axes(node: onnx.NodeProto, args: list[Value], index: int) -> list[int] | None:
    """Axes from an attribute (older opsets) or from input ``index`` (newer ones); None when absent."""
    a = attr(node, "axes")
    if a is not None:
        return [int(i) for i in a]  # type: ignore[union-attr]
    if len(args) > index and args[index] is not None:
        return _ints(args[index])
    return None


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def op(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
        a, b = args[0], args[1]
        assert a is not None and b is not None
        if a.is_floating_point() != b.is_floating_point():  # a float tensor and an integer constant
            b = b.to(a.dtype) if a.is_floating_point() else b
            a = a.to(b.dtype) if b.is_floating_point() else a
        return fn(a, b)

    return op


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    def op(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
        assert args[0] is not None
        return fn(args[0])

    return op


def _gemm(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    a, b = args[0], args[1]
    assert a is not None and b is not None
    if attr(node, "transA", 0):
        a = a.T
    if attr(node, "transB", 0):
        b = b.T
    y = float(attr(node, "alpha", 1.0)) * (a @ b)  # type: ignore[arg-type]
    if len(args) > 2 and args[2] is not None:
        y = y + float(attr(node, "beta", 1.0)) * args[2]  # type: ignore[arg-type]
    return y


def _softmax(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    axis = int(attr(node, "axis", -1 if opset >= 13 else 1))  # type: ignore[arg-type]
    if opset >= 13:
        return torch.softmax(x, dim=axis)
    flat = x.reshape(math.prod(x.shape[: axis % x.ndim]), -1)  # opset < 13: over all axes from ``axis`` on
    return torch.softmax(flat, dim=1).reshape(x.shape)


def _layer_norm(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x, scale = args[0], args[1]
    assert x is not None and scale is not None
    axis = int(attr(node, "axis", -1)) % x.ndim  # type: ignore[arg-type]
    bias = args[2] if len(args) > 2 else None
    eps = float(attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    return F.layer_norm(x, tuple(x.shape[axis:]), scale.expand(x.shape[axis:]), bias, eps)


def _reduce(fn: str) -> Op:
    def op(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
        x = args[0]
        assert x is not None
        axes = _axes(node, args, 1)
        keep = bool(attr(node, "keepdims", 1))
        if not axes:
            if attr(node, "noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return getattr(torch, fn)(x, dim=tuple(a % x.ndim for a in axes), keepdim=keep)

    return op


def _reshape(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    shape = _ints(args[1])
    if not attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    axis = int(attr(node, "axis", 1)) % max(x.ndim, 1)  # type: ignore[arg-type]
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _squeeze(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    axes = _axes(node, args, 1)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.ndim for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    axes = _axes(node, args, 1) or []
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _transpose(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    perm = attr(node, "perm")
    return x.permute(*[int(p) for p in perm]) if perm is not None else x.permute(*reversed(range(x.ndim)))  # type: ignore[union-attr]


def _concat(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    parts = [a for a in args if a is not None]
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return torch.cat([p.to(dtype) for p in parts], dim=int(attr(node, "axis", 0)))  # type: ignore[arg-type]


def _split(node: onnx.NodeProto, args: list[Value], opset: int) -> list[torch.Tensor]:
    x = args[0]
    assert x is not None
    axis = int(attr(node, "axis", 0)) % x.ndim  # type: ignore[arg-type]
    sizes = attr(node, "split")
    if sizes is None and len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    if sizes is None:
        parts = int(attr(node, "num_outputs", len(node.output)))  # type: ignore[arg-type]
        size = -(-x.shape[axis] // parts)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))  # type: ignore[union-attr]


def _slice(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    if opset < 10:
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))  # type: ignore[arg-type]
        axes, steps = attr(node, "axes"), None
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))  # type: ignore[arg-type]
    steps = steps or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st < 0:
            raise ValueError("Slice with a negative step is not supported in a differentiated head")
        dim = x.shape[int(a) % x.ndim]
        index[int(a) % x.ndim] = slice(max(min(int(s), dim), -dim), max(min(int(e), dim), -dim - 1), int(st))
    return x[tuple(index)]


def _gather(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x, idx = args[0], args[1]
    assert x is not None and idx is not None
    axis = int(attr(node, "axis", 0)) % x.ndim  # type: ignore[arg-type]
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _shape(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    dims = list(x.shape)
    start, end = int(attr(node, "start", 0)), attr(node, "end")  # type: ignore[arg-type]
    return torch.tensor(dims[start : None if end is None else int(end)], dtype=torch.int64)  # type: ignore[arg-type]


def _cast(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    to = int(attr(node, "to"))  # type: ignore[arg-type]
    if to not in _DTYPES:
        raise ValueError(f"Cast to ONNX type {to} is not supported")
    return x.to(_DTYPES[to])


def _constant_of_shape(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    value = attr(node, "value")
    fill = torch.from_numpy(onnx.numpy_helper.to_array(value).copy()) if value is not None else torch.zeros(1)
    return fill.reshape(()).expand(_ints(args[0])).clone()


def _expand(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    shape = _ints(args[1])
    rank = max(len(shape), x.ndim)
    shape = [1] * (rank - len(shape)) + shape
    current = [1] * (rank - x.ndim) + list(x.shape)
    return x.reshape(current).expand([max(s, c) if s != 1 else c for s, c in zip(shape, current, strict=True)])


def _where(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    c, a, b = args
    assert c is not None and a is not None and b is not None
    return torch.where(c.bool(), a, b)


def _clip(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    lo = args[1] if len(args) > 1 else attr(node, "min")
    hi = args[2] if len(args) > 2 else attr(node, "max")
    return torch.clamp(x, lo, hi)  # type: ignore[arg-type]


def _gelu(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    assert args[0] is not None
    approximate = attr(node, "approximate", b"none")
    return F.gelu(args[0], approximate="tanh" if approximate in (b"tanh", "tanh") else "none")


def _batch_norm(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    """Inference-mode BatchNormalization: per channel (axis 1), ``scale (x - mean) / sqrt(var + eps) + B``."""
    x, scale, bias, mean, var = args[:5]
    assert x is not None and scale is not None and bias is not None and mean is not None and var is not None
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = float(attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    inv = scale / torch.sqrt(var + eps)
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def _global_average_pool(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    x = args[0]
    assert x is not None
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def _identity(node: onnx.NodeProto, args: list[Value], opset: int) -> torch.Tensor:
    assert args[0] is not None
    return args[0]


OPS: dict[str, Op] = {
    "Identity": _identity,
    "Dropout": _identity,  # inference: the input as it is (a mask output, if asked for, is not used)
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(lambda a, b: torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point() else a / b),
    "Pow": _binary(torch.pow),
    "Equal": _binary(torch.eq),
    "MatMul": _binary(torch.matmul),
    "Gemm": _gemm,
    "Sqrt": _unary(torch.sqrt),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "HardSwish": _unary(lambda x: x * torch.clamp(x / 6 + 0.5, 0, 1)),
    "Gelu": _gelu,
    "LeakyRelu": lambda n, a, o: F.leaky_relu(a[0], float(attr(n, "alpha", 0.01))),  # type: ignore[arg-type]
    "HardSigmoid": lambda n, a, o: torch.clamp(
        float(attr(n, "alpha", 0.2)) * a[0] + float(attr(n, "beta", 0.5)), 0, 1  # type: ignore[arg-type,operator]
    ),
    "Clip": _clip,
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "GlobalAveragePool": _global_average_pool,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Shape": _shape,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Where": _where,
}
SUPPORTED = frozenset(OPS) | {"Constant"}


def run(
    nodes: Sequence[onnx.NodeProto],
    env: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    opset: int,
) -> dict[str, torch.Tensor]:
    """Evaluate ``nodes`` (in order) on ``env``, which is extended with every output and returned."""
    for node in nodes:
        if node.op_type == "Constant":
            continue  # its value is in ``constants``
        args: list[Value] = [
            (env[i] if i in env else constants[i]) if i else None for i in node.input
        ]
        out = OPS[node.op_type](node, args, opset)
        outs = out if isinstance(out, list) else [out]
        for name, value in zip(node.output, outs, strict=False):
            if name:
                env[name] = value
    return env
