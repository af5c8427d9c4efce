"""The attention probabilities of every block of a ``.pt2`` transformer, for attention rollout.

Exported transformers rarely hold the attention matrix as a tensor: timm, Hugging Face and torchvision
call ``F.scaled_dot_product_attention``, which export keeps as one fused node. In a copy of the program
each such node is replaced by the same attention written out (``softmax(q k^T * scale + mask) v``),
which keeps the probabilities; a program that computes ``softmax`` itself gets a tap after each
``[N, heads, T, T]`` softmax instead. The probabilities stay in the autograd graph, so the gradient
of a class logit with respect to each of them (gradient-weighted rollout) is one backward pass.
"""

from __future__ import annotations

import copy
import math
import threading

import torch
import torch.fx

from etm.errors import BadInput

SDPA = "aten.scaled_dot_product_attention.default"
SOFTMAX = ("aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default")


class _Keep(threading.local):
    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []


class _Attention(torch.nn.Module):
    """``scaled_dot_product_attention`` written out, keeping the probabilities in ``keep``."""

    def __init__(self, keep: _Keep) -> None:
        super().__init__()
        self.keep = keep

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        if is_causal:
            raise BadInput("causal attention is not an image classifier's; attention rollout needs full attention")
        if enable_gqa and k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat the key/value heads
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        logits = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            logits = logits + attn_mask
        probs = torch.softmax(logits, dim=-1)
        self.keep.probs.append(probs)
        return probs @ v


class _Tap(torch.nn.Module):
    def __init__(self, keep: _Keep) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        self.keep.probs.append(probs)
        return probs


def attention_nodes(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the nodes that compute full attention over the sequence: fused attention, or a softmax
    whose output is ``[N, heads, T, T]`` for the ``T`` of the program's tokens."""
    names = []
    for n in gm.graph.nodes:
        target = str(n.target)
        val = n.meta.get("val")
        if target == SDPA or (
            target in SOFTMAX
            and isinstance(val, torch.Tensor)
            and val.ndim == 4
            and isinstance(val.shape[-1], int)
            and val.shape[-1] == val.shape[-2]
        ):
            names.append(n.name)
    return names


def attention_program(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, _Keep]:
    """A copy of ``gm`` that keeps every block's attention probabilities (weights shared, not copied)."""
    graph = copy.deepcopy(gm.graph)
    program = torch.fx.GraphModule(gm, graph)
    keep = _Keep()
    wanted = set(attention_nodes(gm))
    for i, node in enumerate([n for n in graph.nodes if n.name in wanted]):
        if str(node.target) == SDPA:
            program.add_submodule(f"_etm_attention_{i}", _Attention(keep))
            with graph.inserting_after(node):
                new = graph.call_module(f"_etm_attention_{i}", node.args, node.kwargs)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        else:
            program.add_submodule(f"_etm_attention_{i}", _Tap(keep))
            with graph.inserting_after(node):
                tap = graph.call_module(f"_etm_attention_{i}", (node,))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
    program.recompile()
    return program, keep
