"""Salience-map conversions shared by the measures: 8-bit maps, min-max maps, empty maps.

Per-map reductions whose bits reach a report (``per_map_sum``) run in numpy float64 on the CPU:
numpy reduces each row with the same pairwise summation whatever the batch size, whereas torch may
split one large reduction across threads (CPU) or blocks (GPU) depending on the batch's shape, which
would make a sharded job differ from an unsharded one in the last bits.
"""

from __future__ import annotations

import numpy as np
import torch


def _check_maps(maps: torch.Tensor) -> None:
    if maps.ndim != 3:
        raise ValueError(f"expected maps [N, h, w], got shape {tuple(maps.shape)}")


def per_map_sum(x: torch.Tensor) -> np.ndarray:
    """Sum of each map of ``x`` [N, ...] in float64, independent of the batch it sits in: [N]."""
    arr = x.detach().to("cpu", torch.float64).numpy()
    return arr.reshape(arr.shape[0], -1).sum(axis=1)


def minmax01(maps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each map to [0, 1] in float64: [N, h, w].

    With ``mask`` ([N, h, w] bool) the min and max are taken over the masked pixels only and pixels
    outside the mask are set to 0. A map that is constant (over its mask) becomes all zeros, like
    the 8-bit rule of the contract.
    """
    _check_maps(maps)
    x = maps.detach().to(torch.float64)
    if mask is None:
        lo = x.amin(dim=(1, 2), keepdim=True)
        hi = x.amax(dim=(1, 2), keepdim=True)
    else:
        if mask.shape != maps.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from maps {tuple(maps.shape)}")
        m = mask.to(device=x.device, dtype=torch.bool)
        lo = torch.where(m, x, torch.inf).amin(dim=(1, 2), keepdim=True)
        hi = torch.where(m, x, -torch.inf).amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    # A constant (or fully masked-out) map has span 0 or -inf: map it to zeros, never divide by 0.
    ok = span > 0
    out = torch.where(ok, (x - torch.where(ok, lo, 0.0)) / torch.where(ok, span, 1.0), 0.0)
    if mask is not None:
        out = torch.where(m, out, 0.0)
    return out


def to_uint8(maps: torch.Tensor) -> torch.Tensor:
    """The contract's 8-bit map: min-max normalise each map to [0, 1], multiply by 255, round.

    Rounding is half to even (``torch.round``, as ``np.round``); an all-equal map is all zeros.
    Returns uint8 [N, h, w] on the maps' device.
    """
    return torch.round(minmax01(maps) * 255.0).to(torch.uint8)


def is_empty(maps: torch.Tensor) -> torch.Tensor:
    """Which maps are empty: [N] bool on the maps' device.

    For ReLU'd (non-negative) maps this is exactly ``sum == 0``; it is written as "no positive
    value" so that a map with stray negative values does not count as non-empty by cancellation.
    """
    _check_maps(maps)
    return ~(maps.detach() > 0).flatten(1).any(dim=1)
