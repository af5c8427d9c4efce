"""Batched SSIM and Pearson r between salience maps.

``ssim`` reproduces ``skimage.metrics.structural_similarity`` with its defaults (7x7 uniform
window, K1 = 0.01, K2 = 0.03, sample covariance, ``gaussian_weights=False``). skimage filters the
whole image with ``uniform_filter`` and averages the SSIM map after cropping ``(win - 1) // 2``
pixels on each side; the cropped map is exactly a VALID-mode ``win x win`` mean (``box_mean``), which
is what we compute, in float64, for a whole batch at once.

The windowed maths runs on the maps' device (only +, -, *, / in a fixed order, which give the same
bits per map whatever the batch). The final per-map means run in numpy float64 on the CPU, because
numpy reduces each map the same way whatever the batch size, so sharded and unsharded jobs agree
bitwise. Both functions therefore return float64 tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from etm.errors import BadInput

K1 = 0.01
K2 = 0.03
DEFAULT_WIN = 7
# Elements (maps x pixels) per chunk: the float64 temporaries of a chunk (5 planes) stay in the CPU
# caches (2**22 was 3x slower on 100,000 8x8 maps); per-map values do not depend on the chunk.
_CHUNK_ELEMS = 1 << 18
# Window sums of 8-bit x, y, x*x, y*y, x*y are integers below win**2 * 255**2; under 2**24 they are
# exact in float32 whatever the summation order (float32's 24-bit mantissa).
_EXACT_F32 = 1 << 24


def _check_pair(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> None:
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(
            f"expected two maps batches [N, h, w] of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if mask is not None and mask.shape != a.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from maps {tuple(a.shape)}")


def _chunks(n: int, per_item: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMS // max(per_item, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def window_size(h: int, w: int, win_size: int | None = None) -> int:
    """The SSIM window for [h, w] maps.

    7 (skimage's default) when both sides are >= 7. Smaller maps, where skimage raises, use the
    largest odd window <= the smaller side (at least 3), so that e.g. 5x5 native maps still get a
    value; maps under 3 pixels in a side cannot be compared and raise ``BadInput``.
    """
    if win_size is not None:
        if win_size < 3 or win_size % 2 == 0 or win_size > min(h, w):
            raise ValueError(f"win_size must be odd, >= 3 and <= the smaller map side, got {win_size} for {h}x{w} maps")
        return win_size
    side = min(h, w)
    if side >= DEFAULT_WIN:
        return DEFAULT_WIN
    if side < 3:
        raise BadInput(
            f"salience maps of {h}x{w} are too small for SSIM (need >= 3x3); use a larger "
            "input size or an earlier target layer"
        )
    return side if side % 2 == 1 else side - 1


def box_mean(x: torch.Tensor, win: int) -> torch.Tensor:
    """VALID-mode ``win x win`` mean over the last two axes: [..., h - win + 1, w - win + 1].

    Separable (rows, then columns, like skimage's ``uniform_filter``) and written as shifted-slice
    additions: a fixed summation order per output on every device, so a map's value never depends
    on its batch, and on CPU much faster than ``avg_pool2d`` in float64.
    """
    h, w = x.shape[-2:]
    rows = x[..., 0 : h - win + 1, :].clone()
    for i in range(1, win):
        rows.add_(x[..., i : h - win + 1 + i, :])
    out = rows[..., 0 : w - win + 1].clone()
    for j in range(1, win):
        out.add_(rows[..., j : w - win + 1 + j])
    return out.div_(win * win)


def _window_means(a: torch.Tensor, b: torch.Tensor, win: int) -> torch.Tensor:
    """Window means of x, y, x*x, y*y, x*y: float64 [N, 5, h - win + 1, w - win + 1].

    For 8-bit maps the window *sums* come from one float32 ``avg_pool2d`` (exact: integers below
    2**24), then ``sum / win**2`` in float64 is the very value the float64 ``box_mean`` gives, several
    times faster. Other maps take ``box_mean`` in float64.
    """
    if a.dtype == torch.uint8 and b.dtype == torch.uint8 and win * win * 255 * 255 < _EXACT_F32:
        x = a.detach().to(torch.float32)
        y = b.detach().to(device=x.device, dtype=torch.float32)
        planes = torch.stack([x, y, x * x, y * y, x * y], dim=1)
        sums = F.avg_pool2d(planes, win, stride=1, divisor_override=1)
        return sums.to(torch.float64).div_(win * win)
    x = a.detach().to(torch.float64)
    y = b.detach().to(device=x.device, dtype=torch.float64)
    return box_mean(torch.stack([x, y, x * x, y * y, x * y], dim=1), win)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float, win_size: int | None = None) -> torch.Tensor:
    """The cropped SSIM map of each pair: float64 [N, h - win + 1, w - win + 1] on ``a``'s device."""
    _check_pair(a, b, None)
    win = window_size(a.shape[1], a.shape[2], win_size)
    ux, uy, uxx, uyy, uxy = _window_means(a, b, win).unbind(1)
    np_ = win * win
    cov_norm = np_ / (np_ - 1)  # sample covariance, skimage's default
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # Same operation order as skimage, so float64 results agree to rounding.
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux**2 + uy**2 + c1
    b2 = vx + vy + c2
    return (a1 * a2) / (b1 * b2)


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float, mask: torch.Tensor | None = None, win_size: int | None = None
) -> torch.Tensor:
    """Mean SSIM of each pair of maps: float64 [N] on the CPU.

    Args:
        a, b: [N, h, w] maps (uint8 or float); computed in float64.
        data_range: 255 for 8-bit maps, 1.0 for maps in [0, 1].
        mask: optional [N, h, w] bool; the SSIM map is averaged only over windows that lie fully
            inside the mask (e.g. the valid region of a translated image). For a rectangular mask
            this equals SSIM on the cropped rectangle (with the window chosen from the full size).
            A map with no such window gets NaN.
        win_size: override the window (odd, >= 3); default see ``window_size``.
    """
    _check_pair(a, b, mask)
    n, h, w = a.shape
    win = window_size(h, w, win_size)
    out = np.empty(n, dtype=np.float64)
    for sl in _chunks(n, h * w):
        s = ssim_map(a[sl], b[sl], data_range, win).cpu().numpy()
        s = s.reshape(s.shape[0], -1)
        if mask is None:
            out[sl] = s.mean(axis=1)
            continue
        # A window is valid when it contains no pixel outside the mask.
        outside = (~mask[sl].to(torch.bool)).to(torch.float32).unsqueeze(1)
        valid = (F.max_pool2d(outside, win, stride=1) == 0).squeeze(1).cpu().numpy()
        valid = valid.reshape(valid.shape[0], -1)
        count = valid.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where(valid, s, 0.0).sum(axis=1) / count
        out[sl][count == 0] = np.nan
    return torch.from_numpy(out)


def pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of each pair of maps (over ``mask`` when given): float64 [N] on the CPU.

    NaN when either map is constant (over the mask) or the mask has fewer than 2 pixels.
    """
    _check_pair(a, b, mask)
    n = a.shape[0]
    per = int(np.prod(a.shape[1:]))
    out = np.empty(n, dtype=np.float64)
    for sl in _chunks(n, per):
        x = a[sl].detach().to("cpu", torch.float64).numpy().reshape(-1, per)
        y = b[sl].detach().to("cpu", torch.float64).numpy().reshape(-1, per)
        if mask is None:
            m = np.ones_like(x, dtype=bool)
        else:
            m = mask[sl].detach().to("cpu", torch.bool).numpy().reshape(-1, per)
        cnt = m.sum(axis=1)
        # Constant maps are detected exactly (max == min), not by a variance that rounding may
        # leave a hair above 0.
        const = (np.where(m, x, np.inf).min(axis=1) == np.where(m, x, -np.inf).max(axis=1)) | (
            np.where(m, y, np.inf).min(axis=1) == np.where(m, y, -np.inf).max(axis=1)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            dx = np.where(m, x - np.where(m, x, 0.0).sum(axis=1, keepdims=True) / cnt[:, None], 0.0)
            dy = np.where(m, y - np.where(m, y, 0.0).sum(axis=1, keepdims=True) / cnt[:, None], 0.0)
            r = (dx * dy).sum(axis=1) / np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
        r = np.clip(r, -1.0, 1.0)
        r[const | (cnt < 2)] = np.nan
        out[sl] = r
    return torch.from_numpy(out)
