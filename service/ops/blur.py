"""Gaussian blur equal to ``scipy.ndimage.gaussian_filter`` and the paper's salience-guided blur.

``gaussian_blur`` blurs the last two axes with scipy's kernel (``truncate=4.0``, radius
``int(truncate * sigma + 0.5)``) and scipy's default boundary ``mode="reflect"``: the half-sample
symmetric extension ``d c b a | a b c d | d c b a``. (Torch's ``"reflect"`` padding is scipy's
``"mirror"``, ``c b | a b c d | c b``, and would not match.) Only the spatial axes are blurred, never
across colour channels.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

BlurMode = Literal["background", "object"]

# The paper's variable blur: map levels v in [0, MAX_LEVEL] in steps of 1 / LEVEL_STEPS.
MAX_LEVEL = 10.0
LEVEL_STEPS = 10


def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """scipy's normalised 1-D Gaussian kernel, ``2 * radius + 1`` taps."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return (phi / phi.sum()).to(dtype=dtype, device=device)


def reflect_indices(n: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source indices of an axis of length ``n`` padded by ``radius`` on both sides in scipy's
    ``reflect`` mode, valid for any radius (the extension is periodic with period ``2 n``)."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


@functools.lru_cache(maxsize=512)
def _blur_matrix64(n: int, sigma: float, truncate: float) -> torch.Tensor:
    """[n, n] float64 matrix of scipy's 1-D Gaussian filter with the reflect boundary folded in."""
    k = gaussian_kernel1d(sigma, truncate)
    r = (k.numel() - 1) // 2
    src = reflect_indices(n, r)  # padded position -> source index
    cols = src[torch.arange(n).view(-1, 1) + torch.arange(2 * r + 1).view(1, -1)]  # [n, 2r + 1]
    a = torch.zeros(n, n, dtype=torch.float64)
    a.index_put_((torch.arange(n).view(-1, 1).expand_as(cols), cols), k.expand(n, -1), accumulate=True)
    return a


def blur_matrix(
    n: int,
    sigma: float,
    truncate: float = 4.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The 1-D Gaussian filter of an axis of length ``n`` as a matrix ``A`` [n, n]: ``A @ v`` equals
    ``scipy.ndimage.gaussian_filter1d(v, sigma, mode="reflect", truncate=truncate)``."""
    return _blur_matrix64(int(n), float(sigma), float(truncate)).to(dtype=dtype, device=device, copy=True)


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0) -> torch.Tensor:
    """Blur the last two axes of ``x`` [..., H, W] like ``scipy.ndimage.gaussian_filter`` (mode
    ``reflect``) applied to each 2-D slice; sigma per axis (rows, columns) or one for both.

    Computed as ``A_rows @ X @ A_cols^T`` with the boundary folded into the matrices: on CPUs a
    dense matmul is several times faster than a thin 81-tap convolution, and every image goes
    through a same-shaped GEMM (``bmm``), so its result does not depend on the batch it sits in.
    Float tensors keep their dtype; a sigma of 0 (or one whose radius rounds to 0) leaves that axis
    unchanged, as in scipy.
    """
    if not x.is_floating_point():
        raise ValueError(f"gaussian_blur needs a float tensor, got {x.dtype}")
    sy, sx = (sigma, sigma) if isinstance(sigma, int | float) else sigma
    if sy < 0 or sx < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    h, w = x.shape[-2:]
    out = x.reshape(-1, h, w)
    if sy > 1e-15 and int(truncate * sy + 0.5) > 0:  # scipy skips sigma <= 1e-15; radius 0 = identity
        a = blur_matrix(h, sy, truncate, x.dtype, x.device)
        out = torch.bmm(a.expand(out.shape[0], h, h), out)
    if sx > 1e-15 and int(truncate * sx + 0.5) > 0:
        a = blur_matrix(w, sx, truncate, x.dtype, x.device)
        out = torch.bmm(out, a.T.expand(out.shape[0], w, w))
    return out.reshape(x.shape)


def level_sigma(levels: torch.Tensor) -> torch.Tensor:
    """The paper's blur sigma for integer levels ``q = round(LEVEL_STEPS * v)``:
    ``sigma = c(MAX_LEVEL - v)`` with ``c(u) = u**4 / 10**3`` (sigma 10 at v = 0, 0 at v = 10)."""
    u = (MAX_LEVEL * LEVEL_STEPS - levels.to(torch.float64)) / LEVEL_STEPS
    return u**4 / 1e3


def blur_levels(maps8: torch.Tensor, mode: BlurMode = "background", smooth_sigma: float = 5.0) -> torch.Tensor:
    """Per-pixel salience levels of the paper's variable blur, as integers ``q`` in [0, 100]
    (level ``v = q / 10``).

    The upsampled 8-bit map (``255 - map`` in ``object`` mode) is smoothed with ``smooth_sigma``
    (in float, without the 8-bit truncation an integer output would add), min-max scaled to
    [0, MAX_LEVEL] per map, and rounded to 0.1. A constant map (e.g. an empty one) has no range and
    gets level 0 everywhere, i.e. the whole image is blurred with the largest sigma.

    Args:
        maps8: [N, H, W] 8-bit maps (uint8 or float in [0, 255]).
        mode: ``background`` blurs where salience is low; ``object`` blurs the salient region.
        smooth_sigma: smoothing of the map before levelling (the paper: 5).
    """
    if mode not in ("background", "object"):
        raise ValueError(f"mode must be 'background' or 'object', got {mode!r}")
    # float64 so that rounding to 0.1 does not depend on the device's float32 summation order.
    m = maps8.to(torch.float64)
    if mode == "object":
        m = 255.0 - m
    m = gaussian_blur(m, smooth_sigma)
    lo = m.amin(dim=(-2, -1), keepdim=True)
    rng = m.amax(dim=(-2, -1), keepdim=True) - lo
    scaled = torch.where(rng > 0, (m - lo) / rng.clamp_min(1e-300), torch.zeros_like(m))
    return torch.round(scaled * (MAX_LEVEL * LEVEL_STEPS)).to(torch.long)


def variable_blur(
    images: torch.Tensor, levels: torch.Tensor, truncate: float = 4.0, scale: float = 1.0
) -> torch.Tensor:
    """Blur each pixel of ``images`` [N, C, H, W] with the sigma of its level ``levels`` [N, H, W]
    (integers in [0, 100], see ``blur_levels``), times ``scale`` (the image size relative to the
    paper's 224 px, see DegradationMeasure).

    Each distinct level present in the batch blurs the images that contain it once (whole image,
    scipy boundary), and each pixel then takes the value of its own level's blur.
    """
    if levels.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"levels {tuple(levels.shape)} do not match images {tuple(images.shape)}")
    top = int(MAX_LEVEL * LEVEL_STEPS)
    n = images.shape[0]
    if levels.numel() == 0:
        return images.clone()
    if levels.is_floating_point() or int(levels.min()) < 0 or int(levels.max()) > top:
        raise ValueError(f"levels must be integers in [0, {top}]")
    # uint8 levels make each level's mask 8x cheaper to read, and one bincount says which images
    # hold which level (a unique() and an any() per level cost as much as a quarter of the blurs).
    lv = levels.to(torch.uint8)
    slots = lv.flatten(1).to(torch.int64) + torch.arange(n, device=lv.device).view(-1, 1) * (top + 1)
    held = (torch.bincount(slots.flatten(), minlength=n * (top + 1)) > 0).view(n, top + 1)
    out = images
    for q in held.any(0).nonzero().flatten().tolist():  # ascending, like torch.unique
        sigma = float(level_sigma(torch.tensor(q))) * scale
        if int(truncate * sigma + 0.5) == 0:  # a 1-tap kernel: the pixel is unchanged
            continue
        at = (lv == q).unsqueeze(1)  # [N, 1, H, W]
        rows = held[:, q].nonzero().squeeze(1)
        # One torch.where per level takes this level's pixels (2x faster than a boolean-mask
        # gather/scatter of the same values); after the first, in place.
        if rows.numel() == n:  # the usual case: every image holds this level
            blurred = gaussian_blur(images, sigma, truncate)
            if out is images:
                out = torch.where(at, blurred, images)
            else:
                torch.where(at, blurred, out, out=out)
        else:
            if out is images:
                out = images.clone()
            out[rows] = torch.where(at[rows], gaussian_blur(images[rows], sigma, truncate), out[rows])
    return out.clone() if out is images else out


def salience_guided_blur(
    images: torch.Tensor,
    maps8: torch.Tensor,
    mode: BlurMode = "background",
    smooth_sigma: float = 5.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """The paper's salience-guided degradation: ``variable_blur(images, blur_levels(maps8, mode))``.

    Args:
        images: [N, C, H, W] float.
        maps8: [N, H, W] upsampled 8-bit maps.
        mode: ``background`` (the map) or ``object`` (``255 - map``).
        smooth_sigma: map smoothing in pixels (already scaled by the caller).
        scale: factor on the per-level blur sigmas (1 = the paper's sigmas in pixels).
    """
    return variable_blur(images, blur_levels(maps8, mode, smooth_sigma), scale=scale)
