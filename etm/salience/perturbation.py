"""Perturbation-based (black-box) salience: RISE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from etm.models.base import Model
from etm.params import Param
from etm.salience.registry import register, targets_for


def rise_masks(n_masks: int, grid: int, p: float, size: tuple[int, int], seed: int) -> torch.Tensor:
    """RISE masks (Petsiuk et al. 2018): random binary grids, bilinearly upsampled, randomly shifted.
    The same seed gives the same masks for every image, so batches and shards agree."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n_masks, 1, grid, grid, generator=gen) < p).float()
    up = F.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False)
    dx = torch.randint(0, ch, (n_masks,), generator=gen)
    dy = torch.randint(0, cw, (n_masks,), generator=gen)
    return torch.stack([up[i, 0, dx[i] : dx[i] + h, dy[i] : dy[i] + w] for i in range(n_masks)])


@register(
    "rise",
    title="RISE",
    has_native=False,
    params={
        "n_masks": Param(1000, int, 1, 10_000),  # the masks are held at input size: 10,000 at 224 px are 2 GB
        "grid": Param(7, int, 1, 128),
        "p": Param(0.5, float, 0, 1, lo_open=True),  # the map is divided by p
        "seed": Param(0, int, 0, 2**31 - 1),
        "batch": Param(128, int, 1, 4096),
    },
)
def rise(
    model: Model,
    images: torch.Tensor,
    *,
    fixed: int | None,
    layer: None,
    seeds: torch.Tensor,
    n_masks: int,
    grid: int,
    p: float,
    seed: int,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Salience = sum_i P(target | x * M_i) M_i / (n_masks * p); masked pixels are black."""
    logits = model.forward(images).logits
    targets = targets_for(model, logits, fixed)
    masks = rise_masks(n_masks, grid, p, tuple(images.shape[-2:]), seed).to(images.device)
    sal = torch.zeros(len(images), *images.shape[-2:], device=images.device)
    for i in range(len(images)):
        for j in range(0, n_masks, batch):
            m = masks[j : j + batch]
            probs = model.probabilities(model.forward(images[i : i + 1] * m[:, None]).logits)
            sal[i] += torch.einsum("m,mhw->hw", probs[:, int(targets[i])].to(m.device), m)
    return sal / (n_masks * p), logits
