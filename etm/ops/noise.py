"""Salt-and-pepper noise, batched and seeded per image."""

from __future__ import annotations

import torch

from etm.ops.random import keyed_uniform, stream_id


def salt_and_pepper(
    images: torch.Tensor,
    amount: float,
    seeds: torch.Tensor,
    stream: int = 0,
    salt_vs_pepper: float = 0.5,
) -> torch.Tensor:
    """Salt-and-pepper noise as ``skimage.util.random_noise(mode="s&p")`` draws it.

    Every element of each image (each channel of each pixel, as skimage does on an [H, W, 3] array)
    is replaced with probability ``amount``; a replaced element becomes 1 with probability
    ``salt_vs_pepper`` and 0 otherwise. The two Bernoulli draws are independent, as in skimage.

    Args:
        images: [N, ...] float in [0, 1].
        amount: fraction of elements replaced, in [0, 1].
        seeds: [N] int64 per-image seeds; with ``stream`` they fully determine the noise, so an
            image is noised identically in any batch, shard or device.
        stream: an index separating independent draws for the same image (e.g. the amount index).
        salt_vs_pepper: share of replaced elements set to 1.

    Returns:
        The noisy images, same shape and dtype as ``images``.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    if not 0.0 <= salt_vs_pepper <= 1.0:
        raise ValueError(f"salt_vs_pepper must be in [0, 1], got {salt_vs_pepper}")
    if seeds.shape != images.shape[:1]:
        raise ValueError(f"need one seed per image: seeds {tuple(seeds.shape)}, images {tuple(images.shape)}")
    if amount == 0.0:
        return images.clone()
    shape = tuple(images.shape[1:])
    seeds = seeds.to(images.device)
    # u < p with u in [0, 1): p = 0 never fires and p = 1 always does, like skimage's special cases.
    flipped = keyed_uniform(seeds, stream_id("s&p.flip", stream), shape) < amount
    salted = keyed_uniform(seeds, stream_id("s&p.salt", stream), shape) < salt_vs_pepper
    out = torch.where(flipped & salted, torch.ones_like(images), images)
    return torch.where(flipped & ~salted, torch.zeros_like(images), out)
