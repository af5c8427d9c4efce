"""Find and differentiate the classification head of an ONNX graph.

ONNX Runtime (CPU build) has no autograd, so we never differentiate the whole network. Grad-CAM
and Grad-CAM++ only need the gradient of the class logit with respect to the target activation
``A``. When ``A`` reaches the logits only through a global average pool ``z = mean_hw(A)`` followed
by a small head, that gradient is ``d logit / d z`` spread evenly over the ``h*w`` cells. We
re-express just the head (a handful of Gemm/MatMul/activation nodes, whitelisted below) as torch
operations and let autograd differentiate it. For a purely linear head the gradient is the weight
row itself: that is the one-forward-pass fast path for CAM and Grad-CAM.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# Ops that only change the shape of the pooled vector [N, K, 1, 1] -> [N, K].
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}
_ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip"}
_AFFINE = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "BatchNormalization"}
HEAD_OPS = _RESHAPES | _ACTIVATIONS | _AFFINE


@dataclass
class OnnxHead:
    """The part of the graph between the global pool and the logits.

    Attributes:
        layer: name of the 4-D activation that feeds the pool (the ``auto`` target layer).
        pool: description of the pooling node.
        nodes: head nodes in execution order (pool output -> logits).
        constants: numpy values of the constant inputs the head nodes use.
        linear: True when the head is affine in the pooled vector.
        unsupported: op types met on the way that we cannot differentiate (empty when fine).
    """

    layer: str
    pool: str
    pool_output: str
    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]
    linear: bool
    unsupported: list[str]

    @property
    def chain(self) -> str:
        return " -> ".join(n.op_type for n in self.nodes) or "(none)"

    def as_torch(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A torch function z [N, K] -> logits [N, C] equal to the head, differentiable."""
        consts = {
            k: torch.from_numpy(np.array(v, dtype=np.float32))
            for k, v in self.constants.items()
            if np.issubdtype(v.dtype, np.floating)
        }
        nodes = self.nodes
        pool_out = self.pool_output

        def run(z: torch.Tensor) -> torch.Tensor:
            env: dict[str, torch.Tensor] = {pool_out: z}
            for node in nodes:
                env[node.output[0]] = _apply(node, env, consts, z.device)
            return env[nodes[-1].output[0]] if nodes else z

        return run

    def linear_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, K], b [C]) of an affine head, read off by evaluating it at 0 and at unit vectors."""
        assert self.linear
        f = self.as_torch()
        k = self._width()
        with torch.no_grad():
            b = f(torch.zeros(1, k))[0]
            w = (f(torch.eye(k)) - b).T.contiguous()
        return w, b

    def _width(self) -> int:
        for node in self.nodes:
            if node.op_type in ("Gemm", "MatMul"):
                w = self.constants[node.input[1]]
                trans_b = _attr(node, "transB", 0) if node.op_type == "Gemm" else 0
                return int(w.shape[1] if trans_b else w.shape[0])
        raise ValueError("head has no Gemm/MatMul node")


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _apply(
    node: onnx.NodeProto, env: dict[str, torch.Tensor], consts: dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    def val(name: str) -> torch.Tensor:
        return env[name] if name in env else consts[name].to(device)

    op = node.op_type
    x = val(node.input[0])
    if op in _RESHAPES:
        # Between the pool and the first Gemm only flattening [N, K, 1, 1] -> [N, K] makes sense.
        return x.reshape(x.shape[0], -1)
    if op == "Gemm":
        a, b = x, val(node.input[1])
        if _attr(node, "transA", 0):
            a = a.T
        if _attr(node, "transB", 0):
            b = b.T
        y = float(_attr(node, "alpha", 1.0)) * (a @ b)
        if len(node.input) > 2 and node.input[2]:
            y = y + float(_attr(node, "beta", 1.0)) * val(node.input[2])
        return y
    if op == "MatMul":
        return x @ val(node.input[1])
    if op == "BatchNormalization":  # inference mode: an affine map per feature (a BatchNorm1d after the pool)
        from etm.models.onnx_torch import OPS

        return OPS[op](node, [x, *(val(i) for i in node.input[1:5])], 0)  # type: ignore[return-value]
    if op in ("Add", "Sub", "Mul", "Div"):
        y = val(node.input[1])
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](x, y)
    if op == "Relu":
        return torch.relu(x)
    if op == "LeakyRelu":
        return torch.nn.functional.leaky_relu(x, float(_attr(node, "alpha", 0.01)))
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "HardSigmoid":
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        return torch.clamp(alpha * x + beta, 0, 1)
    if op == "HardSwish":
        return x * torch.clamp(x / 6 + 0.5, 0, 1)
    if op == "Clip":
        lo = val(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = val(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return torch.clamp(x, lo, hi)
    raise ValueError(f"unsupported head op {op}")


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, Constant-node outputs and Identity-of-constant outputs (legacy exports)."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            values[node.output[0]] = (
                numpy_helper.to_array(node.attribute[0].t)
                if node.attribute[0].name == "value"
                else np.array(onnx.helper.get_attribute_value(node.attribute[0]))
            )
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _is_global_pool(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type == "ReduceMean":
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].tolist()
        return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]
    return False


def find_head(model: onnx.ModelProto, output: str) -> OnnxHead | None:
    """Walk back from ``output`` to the last global average pool; None when there is none."""
    consts = constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes: list[onnx.NodeProto] = []
    unsupported: list[str] = []
    name = output
    while name in producer:
        node = producer[name]
        if _is_global_pool(node, consts):
            nodes.reverse()
            linear = (
                not unsupported
                and all(n.op_type in _RESHAPES | _AFFINE for n in nodes)
                and sum(n.op_type in ("Gemm", "MatMul") for n in nodes) == 1
                and all(n.op_type not in ("Mul", "Div") for n in nodes)  # BatchNormalization: affine, so linear
            )
            return OnnxHead(
                layer=node.input[0],
                pool=f"{node.op_type} node {node.name or node.output[0]!r}",
                pool_output=node.output[0],
                nodes=nodes,
                constants={i: consts[i] for n in nodes for i in n.input if i in consts},
                linear=linear,
                unsupported=unsupported,
            )
        # A reshape's shape input may be computed (Shape -> Gather -> Concat); only input 0 is data.
        data_inputs = [node.input[0]] if node.op_type in _RESHAPES else [i for i in node.input if i and i not in consts]
        if node.op_type not in HEAD_OPS:
            unsupported.append(node.op_type)
        if len(data_inputs) != 1:
            # Two data inputs (a skip connection into the head, a computed shape): not a simple head.
            unsupported.append(f"{node.op_type} with {len(data_inputs)} non-constant inputs")
            if not data_inputs:
                return None
        nodes.append(node)
        name = data_inputs[0]
    return None


def inferred_values(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...] | None], dict[str, int]]:
    """The static shape (unknown sizes as -1) and element type of every tensor ONNX shape inference
    can tell; without inference (it fails on some graphs), those the graph's own value_info gives."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    shapes: dict[str, tuple[int, ...] | None] = {}
    types: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims) if dims else None
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return shapes, types


def module_calls(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]
) -> tuple[list[tuple[str, tuple[int, ...] | None]], dict[str, tuple[str, ...]]]:
    """Each node's output with its static shape (``inferred_values``), in graph order, and the PyTorch
    module scopes it was exported from: from the dynamo exporter's ``pkg.torch.onnx.name_scopes``
    metadata, or the legacy exporter's node names (``/features/norm5/BatchNormalization``). For
    ``layer: torchcam`` (``pt2_model.torchcam_candidate``). Names are only read as text."""
    nodes: list[tuple[str, tuple[int, ...] | None]] = []
    calls: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        if len(node.output) != 1:
            continue
        out = node.output[0]
        nodes.append((out, shapes.get(out)))
        props = {p.key: p.value for p in node.metadata_props}
        scopes: list[str] = []
        raw = props.get("pkg.torch.onnx.name_scopes", "")
        if raw and len(raw) < 10_000:
            scopes = re.findall(r"'([A-Za-z0-9_.]*)'", raw)[:-1]  # the last entry names the op itself
        elif node.name.startswith("/"):
            parts = node.name.split("/")[1:-1]
            scopes = ["", *("/".join(parts[: i + 1]) for i in range(len(parts)))]  # unique per module
        if scopes:
            calls[out] = tuple(scopes)
    return nodes, calls


def relu_into(model: onnx.ModelProto, tensor: str) -> str | None:
    """The input of the Relu node that produces ``tensor``, if one does."""
    for node in model.graph.node:
        if node.op_type == "Relu" and list(node.output) == [tensor]:
            return node.input[0]
    return None
