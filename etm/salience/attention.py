"""Attention-based salience for transformers: attention rollout and gradient-weighted rollout.

Both read every block's attention probabilities ``P_l`` (``[N, heads, T, T]``; see ``pt2_attention``
and ``OnnxModel.attention``) and propagate them from the first block to the last; the map is the row
of the token the head reads out (the class token; for a mean-pooled head, the mean of all rows) over
the patch tokens, on the patch grid, so every measure works on it as on a Grad-CAM map.

- ``rollout`` (Abnar and Zuidema, 2020): ``A_l = 0.5 mean_h(P_l) + 0.5 I``, rows renormalised,
  ``R = A_L ... A_1``. No gradients: it runs on ONNX too, and it does not depend on the class.
- ``gradient_rollout`` (Chefer, Gur and Wolf, 2021, "Generic attention-model explainability"):
  ``R = I``, then for each block ``R = R + mean_h((dy_c/dP_l * P_l)^+) R``. The gradient of the class
  logit runs through the whole network, so ``.pt2`` only.
"""

from __future__ import annotations

import torch

from etm.errors import BadInput
from etm.models.base import Model
from etm.models.layouts import token_grid
from etm.salience.registry import register, targets_for


def readout_token(model: Model) -> int | None:
    """The token the head reads (None: a mean over tokens); BadInput when the model has no such head."""
    if model.format == "onnx":
        target = getattr(model, "token_target", None)
        if target is not None and target.kind == "tokens":
            return target.readout
    elif getattr(model, "auto_kind", None) == "tokens":
        return getattr(model, "readout_token", None)
    raise BadInput("attention rollout needs a transformer whose head reads a class token or the mean of its tokens")


def _to_grid(model: Model, relevance: torch.Tensor, readout: int | None) -> torch.Tensor:
    """Row ``readout`` (or the mean row) of ``relevance`` [N, T, T] over the patch tokens, as [N, gh, gw]."""
    tokens = relevance.shape[-1]
    found = token_grid(tokens, tuple(model.metadata.input_size))  # type: ignore[arg-type]
    if found is None:
        raise BadInput(f"the attention covers {tokens} tokens, which no patch grid of the input size fits")
    prefix, grid = found
    row = relevance[:, readout, :] if readout is not None else relevance.mean(dim=1)
    return row[:, prefix:].reshape(len(row), *grid)


def _check(probs: list[torch.Tensor]) -> None:
    if not probs:
        raise BadInput("the model computes no attention over its tokens, so there is nothing to roll out")
    if len({p.shape[-1] for p in probs}) != 1:
        raise BadInput("the blocks attend over different numbers of tokens (windowed attention): no rollout")


@register("rollout", title="Attention rollout", has_native=True)
def rollout(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: str | None, seeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention rollout (Abnar and Zuidema 2020), heads averaged, residual weight 0.5. ``layer`` is not
    used: every block's attention is."""
    readout = readout_token(model)
    probs, _, logits = model.attention(images)  # type: ignore[attr-defined]
    _check(probs)
    eye = torch.eye(probs[0].shape[-1], dtype=torch.float64)
    rolled = eye.expand(len(images), -1, -1)
    for p in probs:
        a = 0.5 * p.double().mean(dim=1) + 0.5 * eye
        rolled = (a / a.sum(dim=-1, keepdim=True)) @ rolled
    return _to_grid(model, rolled, readout).float(), logits


@register("gradient_rollout", title="Gradient-weighted attention rollout", has_native=True)
def gradient_rollout(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: str | None, seeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-weighted rollout (Chefer et al. 2021): relevance ``R = R + mean_h((grad * P)^+) R``."""
    readout = readout_token(model)
    probs, grads, logits = model.attention(images, lambda lg: targets_for(model, lg, fixed))  # type: ignore[attr-defined]
    _check(probs)
    eye = torch.eye(probs[0].shape[-1], dtype=torch.float64)
    relevance = eye.expand(len(images), -1, -1).clone()
    for p, g in zip(probs, grads, strict=True):
        weighted = (g.double() * p.double()).clamp_min(0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return _to_grid(model, relevance, readout).float(), logits
