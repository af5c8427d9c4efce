"""``layer: auto`` for transformers and channels-last heads: find the target tokens from the graph.

Both formats (``.pt2`` fx graphs and ONNX graphs) are first described as the same few kinds of node
(``GraphNode``); one walk back from the logits then decides:

- a mean over tokens (``[N, T, K] -> [N, K]``, ViT with ``global_pool='avg'``) or over the rows and
  columns of a channels-last map (``[N, h, w, K] -> [N, K]``, Swin): the target is the token output of
  the last block, before the final norm;
- a class token taken out of the sequence (``x[:, 0]``: ViT, DeiT, BEiT, CLIP-ViT): the logits
  depend on the patch tokens at the last block's output not at all, only through the last block's
  attention, so the target is the input of that attention (the last block's ``norm1``, where
  pytorch-grad-cam's documentation puts it for ViT).

CNN heads with a global average pool over ``[N, K, h, w]`` are found by each format's own head
finder first; this walk only sees the graphs those finders give up on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etm.models.layouts import Kind

# Kinds of node the walk passes through on its way back from the logits.
_THROUGH = {"linear", "affine", "shape", "activation", "norm", "add", "permute"}


@dataclass
class GraphNode:
    """One node as the walk sees it: its output ``name``, a normalised ``kind`` (``linear`` needs a
    constant weight; ``affine``: an elementwise op with a constant), its non-constant ``inputs`` in
    order, its output ``shape`` (batch as -1, None if unknown) and, for ``mean``/``select``, ``dims``
    (reduced dims) or ``axis``/``index``."""

    name: str
    kind: str
    inputs: list[str]
    shape: tuple[int, ...] | None = None
    dims: tuple[int, ...] = ()
    axis: int | None = None
    index: int | None = None


@dataclass
class Target:
    layer: str
    kind: Kind
    how: str  # for the capability table
    head: list[str] = field(default_factory=list)  # kinds from the target to the logits, in order
    readout: int | None = None  # the class token the head reads (None: a mean over tokens)


def find_target(nodes: dict[str, GraphNode], order: list[str], output: str) -> Target | None:
    """The auto target for a graph whose nodes are ``nodes`` (by output name, ``order`` topological)."""
    seen: list[str] = []
    cur = nodes.get(output)
    while cur is not None:
        if cur.kind == "mean" and cur.inputs:
            src = nodes.get(cur.inputs[0])
            rank = len(src.shape) if src is not None and src.shape is not None else None
            dims = sorted(d % rank for d in cur.dims) if rank else []
            if (rank, dims) in ((4, [1, 2]), (3, [1])):
                layer, skipped = _before_final_norm(nodes, cur.inputs[0])
                how = "mean over a channels-last map" if rank == 4 else "mean over tokens"
                return Target(layer, "nhwc" if rank == 4 else "tokens", how, [*skipped, "mean", *_kinds(seen)])
            return None
        if cur.kind == "select" and cur.axis == 1 and cur.inputs:
            src = nodes.get(cur.inputs[0])
            if src is None or src.shape is None or len(src.shape) != 3:
                return None
            layer = _last_attention_input(nodes, order)
            if layer is None:
                return None
            return Target(
                layer,
                "tokens",
                f"class token {cur.index} read out; target at the input of the last attention",
                ["attention", *_kinds(seen)],
                readout=cur.index,
            )
        if cur.kind not in _THROUGH or not cur.inputs:
            return None
        seen.append(cur.kind)
        cur = nodes.get(cur.inputs[0])
    return None


def _kinds(seen: list[str]) -> list[str]:
    return list(reversed(seen))


def _before_final_norm(nodes: dict[str, GraphNode], name: str) -> tuple[str, list[str]]:
    """Step back over the final norm, prefix-dropping slices and copies: the last block's own output
    (in the layout the head reads it in: a reshape that changes the shape is not stepped over).
    Returns it with the kinds stepped over, in graph order."""
    skipped: list[str] = []
    cur = nodes.get(name)
    while cur is not None and cur.inputs:
        prev = nodes.get(cur.inputs[0])
        if prev is None or not (
            cur.kind in ("norm", "slice") or (cur.kind == "shape" and cur.shape is not None and cur.shape == prev.shape)
        ):
            break
        skipped.insert(0, cur.kind)
        name, cur = prev.name, prev
    return name, skipped


def _last_attention_input(nodes: dict[str, GraphNode], order: list[str]) -> str | None:
    """The input of the query projection of the last attention in the graph."""
    attention = next((nodes[n] for n in reversed(order) if nodes[n].kind in ("attention", "softmax")), None)
    if attention is None or not attention.inputs:
        return None
    cur = nodes.get(attention.inputs[0])
    for _ in range(64):  # q -> (scale) -> split/select -> permute -> reshape -> linear(x): x
        if cur is None or not cur.inputs:
            return None
        if cur.kind == "linear":
            return cur.inputs[0]
        cur = nodes.get(cur.inputs[0])
    return None
