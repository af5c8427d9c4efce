"""Activation-based salience: CAM and Score-CAM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from etm.models.base import Model
from etm.params import Param
from etm.salience.progress import report_step
from etm.salience.registry import register, targets_for


@register("cam", title="CAM", has_native=True, params={"chunk": Param(32, int, 1, 4096)})
def cam(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: str, seeds: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAM (Zhou et al. 2016): ReLU(sum_k w_ck A_k) for a GAP + linear head.

    ONNX: the head's weights are read from the graph. pt2: autograd gives d logit / d A = w_c / (h*w)
    exactly for a linear head, so CAM = h*w x Grad-CAM there.
    """
    if model.format == "onnx":  # by name: importing OnnxModel would load ONNX Runtime in the API
        f = model.forward(images, layer)
        head = model.head(layer)
        assert f.activation is not None and head is not None
        targets = targets_for(model, f.logits, fixed)
        weights = model.class_weights(head, targets)
        return torch.relu(torch.einsum("nk,nkhw->nhw", weights, f.activation)), f.logits
    from etm.salience.gradient import _autograd_activation

    act, grad, logits = _autograd_activation(model, images, fixed, layer, chunk)
    return torch.relu(torch.einsum("nk,nkhw->nhw", grad.sum(dim=(2, 3)), act)), logits


# Channels Score-CAM weighs per image by default: one masked forward pass each, so the budget bounds the cost
# (ResNet-50's 2048 channels at 224 px are 2048 passes per image). 0 or null: every channel.
SCORECAM_MAX_CHANNELS = 256


@register(
    "scorecam",
    title="Score-CAM",
    has_native=True,
    params={
        "batch": Param(64, int, 1, 4096),
        "max_channels": Param(SCORECAM_MAX_CHANNELS, int, 0, 100_000, nullable=True),
    },
)
def scorecam(
    model: Model,
    images: torch.Tensor,
    *,
    fixed: int | None,
    layer: str,
    seeds: torch.Tensor,
    batch: int,
    max_channels: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-CAM (Wang et al. 2020): each channel, upsampled and min-max scaled to [0, 1], masks the
    (normalised) input; the target probability on the masked input weights the channel. Masking is
    applied in normalised space, so masked-out pixels take the dataset mean colour.

    ``max_channels``: per image, only the channels with the highest mean activation are weighed (the
    others get weight 0); 0, null or at least the channel count: all of them, exactly as without a budget.
    Masked passes run ``batch`` at a time; each chunk is reported to ``report_step`` (progress with an ETA).
    """
    f = model.forward(images, layer)
    act = f.activation
    assert act is not None
    targets = targets_for(model, f.logits, fixed)
    n, k = act.shape[:2]
    h, w = images.shape[-2:]
    mean = torch.tensor(model.metadata.mean, device=images.device).view(1, 3, 1, 1)
    if model.metadata.channel_order == "BGR":
        mean = mean.flip(1)
    keep = k if not max_channels or max_channels >= k else max_channels
    weights = torch.zeros(n, k)
    done, total = 0, n * keep
    for i in range(n):
        a = act[i]
        # Stable sort: ties keep channel order, so the kept set does not depend on the sort's whims.
        idx = None if keep == k else torch.argsort(a.mean(dim=(1, 2)), descending=True, stable=True)[:keep].cpu()
        sel = act[i : i + 1].transpose(0, 1) if idx is None else a[idx.to(a.device)][:, None]
        up = F.interpolate(sel, size=(h, w), mode="bilinear", align_corners=False)
        lo = up.amin(dim=(2, 3), keepdim=True)
        hi = up.amax(dim=(2, 3), keepdim=True)
        masks = torch.where(hi > lo, (up - lo) / (hi - lo + 1e-12), torch.zeros_like(up)).to(images.device)
        for j in range(0, keep, batch):
            m = masks[j : j + batch]
            masked = mean + m * (images[i : i + 1] - mean)
            probs = model.probabilities(model.forward(masked).logits)[:, int(targets[i])].cpu()
            if idx is None:
                weights[i, j : j + batch] = probs
            else:
                weights[i, idx[j : j + batch]] = probs
            done += len(m)
            report_step("scorecam", done, total)
    return torch.relu(torch.einsum("nk,nkhw->nhw", weights.to(act.device), act)), f.logits
