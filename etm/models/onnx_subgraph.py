"""Head-only differentiation of an ONNX graph from any target tensor, and ``layer: auto`` for
transformer graphs.

The head of a target tensor ``A`` is every node on a path from ``A`` to the logits. Its other inputs
(the residual stream entering the last block, tensors computed before ``A``) are read from the same
ONNX Runtime pass as extra outputs and held fixed, so autograd on the head alone (``onnx_torch``)
gives exactly ``d logit / d A``, the partial derivative Grad-CAM needs (what autograd through the
whole PyTorch network gives at that layer). For a class-token ViT the head is the last block's
attention and MLP, the final norm and the classifier: a few nodes out of hundreds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from etm.models import onnx_torch
from etm.models.onnx_head import constant_values
from etm.models.target_search import GraphNode, Target, find_target

MAX_HEAD_NODES = 2_000  # a target early in a big network makes the "head" most of it: refuse past this


@dataclass
class SubgraphHead:
    """The nodes from ``layer`` to ``output`` and what they read from the rest of the graph."""

    layer: str
    output: str
    nodes: list[onnx.NodeProto]
    side: list[str]  # non-constant tensors read by the head but computed outside it
    constants: dict[str, np.ndarray]
    opset: int
    unsupported: list[str]
    _converted: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    @property
    def summary(self) -> str:
        counts = Counter(n.op_type for n in self.nodes if n.op_type != "Constant")
        return f"{sum(counts.values())} nodes (" + ", ".join(f"{op} x{c}" for op, c in sorted(counts.items())) + ")"

    def _torch_constants(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The constants as tensors, converted once per device and dtype, not on every batch (a ViT head
        holds its last block's weights)."""
        key = (device, dtype)
        if key not in self._converted:
            consts = {k: torch.from_numpy(np.array(v)) for k, v in self.constants.items()}
            self._converted[key] = {
                k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in consts.items()
            }
        return self._converted[key]

    def logits(self, activation: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's output for ``activation`` (in the layer's own layout), differentiable."""
        consts = self._torch_constants(activation.device, activation.dtype)
        env = {self.layer: activation, **{k: v.to(activation.device) for k, v in side.items()}}
        return onnx_torch.run(self.nodes, env, consts, self.opset)[self.output]


def head_subgraph(model: onnx.ModelProto, layer: str, output: str) -> SubgraphHead:
    """The head of ``layer`` (see the module docstring); ``unsupported`` lists op types it cannot run."""
    consts = constant_values(model)
    reached = {layer}
    downstream: list[onnx.NodeProto] = []
    for node in model.graph.node:  # graph order is topological
        if any(i in reached for i in node.input):
            downstream.append(node)
            reached.update(node.output)
    needed = {output}
    nodes: list[onnx.NodeProto] = []
    for node in reversed(downstream):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    produced = {layer, *(o for n in nodes for o in n.output)}
    side = sorted({i for n in nodes for i in n.input if i and i not in produced and i not in consts})
    unsupported = sorted({n.op_type for n in nodes if n.op_type not in onnx_torch.SUPPORTED})
    if len(nodes) > MAX_HEAD_NODES:
        unsupported.append(f"more than {MAX_HEAD_NODES} nodes after the target")
    used = {i for n in nodes for i in n.input}
    return SubgraphHead(
        layer=layer,
        output=output,
        nodes=nodes,
        side=side,
        constants={k: v for k, v in consts.items() if k in used},
        opset=_opset(model),
        unsupported=unsupported,
    )


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


# ---- layer: auto for graphs without a global average pool (see target_search) -----------------------

_KINDS = {
    "LayerNormalization": "norm",
    "Transpose": "permute",
    "Softmax": "softmax",
    "Slice": "slice",
    **{op: "shape" for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Expand", "Cast")},
    **{op: "activation" for op in ("Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu")},
}
_DATA_FIRST_ONLY = {"Reshape", "Slice", "Gather", "Squeeze", "Unsqueeze", "Expand", "Split"}


def graph_nodes(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]
) -> tuple[dict[str, GraphNode], list[str]]:
    """The graph as ``target_search`` sees it: nodes by output name and their order."""
    consts = constant_values(model)
    nodes: dict[str, GraphNode] = {}
    order: list[str] = []
    for node in model.graph.node:
        if not node.output or node.output[0] in consts:
            continue
        op = node.op_type
        data = [node.input[0]] if op in _DATA_FIRST_ONLY else [i for i in node.input if i and i not in consts]
        kind = _KINDS.get(op, "other")
        g = GraphNode(node.output[0], kind, data, shapes.get(node.output[0]))
        if op in ("Gemm", "MatMul"):
            g.kind = "linear" if len(data) == 1 and node.input[1] in consts else "matmul"
        elif op in ("Add", "Sub", "Mul", "Div"):
            g.kind = "affine" if len(data) == 1 else "add"
        elif op == "ReduceMean":
            axes = onnx_torch.attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1] in consts:
                axes = consts[node.input[1]].reshape(-1).tolist()
            g.kind, g.dims = "mean", tuple(int(a) for a in (axes or ()))
        elif op == "Gather" and len(node.input) > 1 and node.input[1] in consts and consts[node.input[1]].ndim == 0:
            g.kind, g.axis, g.index = "select", int(onnx_torch.attr(node, "axis", 0)), int(consts[node.input[1]])
            src = shapes.get(node.input[0])
            if src is not None and g.axis < 0:
                g.axis %= len(src)
        nodes[g.name] = g
        order.append(g.name)
    return nodes, order


def token_target(model: onnx.ModelProto, output: str, shapes: dict[str, tuple[int, ...] | None]) -> Target | None:
    """``target_search.find_target`` on this graph."""
    nodes, order = graph_nodes(model, shapes)
    return find_target(nodes, order, output)


def attention_outputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]) -> list[str]:
    """Outputs of the Softmax nodes that may be full attention over a sequence, ``[N, heads, T, T]``
    (exporters often leave those sizes symbolic; ``OnnxModel.attention`` checks the real shapes)."""
    out = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or not node.output:
            continue
        shape = shapes.get(node.output[0])
        if shape is None or (len(shape) == 4 and (-1 in shape[-2:] or shape[-1] == shape[-2])):
            out.append(node.output[0])
    return out
