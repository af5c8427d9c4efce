"""Gaussian blur equal to ``scipy.ndimage.gaussian_filter`` on float images, batched on any device.

(The paper's salience-guided blur works on uint8 images, as the authors' code does: see
``etm.ops.paper``.)

``gaussian_blur`` blurs the last two axes with scipy's kernel (``truncate=4.0``, radius
``int(truncate * sigma + 0.5)``) and scipy's default boundary ``mode="reflect"``: the half-sample
symmetric extension ``d c b a | a b c d | d c b a``. (Torch's ``"reflect"`` padding is scipy's
``"mirror"``, ``c b | a b c d | c b``, and would not match.) Only the spatial axes are blurred, never
across colour channels.
"""

from __future__ import annotations

import functools

import torch


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
