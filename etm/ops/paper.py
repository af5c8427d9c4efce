"""The authors' 8-bit arithmetic, step for step, for the paper variants.

Crum et al. released their measure code (``taisubmission23/Explain2Me``, commit 86318cc). Its maps
and degraded images go through 8-bit files, and the integer steps change the numbers:

- ``generate-cams.py`` saves TorchCAM's map with ``to_pil_image``: the map is min-max normalised in
  float32 (``cam -= min; cam /= max``), multiplied by 255 and **truncated** to uint8
  (``to_uint8_truncated``). The upscaled map is PIL's bicubic resize of that 8-bit image
  (``upscale_bicubic``).
- ``Measures/Degradation/main.py`` smooths the upscaled uint8 map with ``scipy.ndimage.gaussian_filter``
  (a uint8 output, so truncated again), scales it with ``x / (x.max() / 10)`` (no minimum
  subtracted), rounds to 0.1 (``np.around``) and blurs each uint8 colour channel with SciPy once per
  level (``paper_blur_levels``, ``paper_blur``).
- ``noise-varying-intensities.py`` adds noise with ``skimage.util.random_noise`` (which works on
  ``image * (1 / 255)`` in float64) and stores ``(noisy * 255).astype(uint8)``, truncating: even at
  amount 0, 24 of the 256 values come back one lower (``quantise_like_skimage``).

SciPy and PIL are called directly (not re-implemented) so that every truncation happens on the same
floating-point values as in the authors' code. They run on the CPU; results go back to the caller's
device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

MAX_BLUR = 10  # the authors' sigma_max: an int, as in their code (it enters 1 / max**3 and max - v)
BLUR_ORDER = 4  # get_curve(max_blur, val, order=4)


def to_uint8_truncated(maps: torch.Tensor) -> torch.Tensor:
    """TorchCAM's normalisation then ``to_pil_image``: float32 ``(m - min) / max``, ``* 255``, truncated.

    ``maps`` [N, h, w] (ReLU'd, as TorchCAM's are). An empty (all-zero) map, which TorchCAM would turn
    into NaNs, is all zeros. Returns uint8 [N, h, w] on the maps' device.
    """
    x = maps.detach().to(torch.float32)
    x = x - x.flatten(1).amin(dim=1).view(-1, 1, 1)
    top = x.flatten(1).amax(dim=1).view(-1, 1, 1)
    x = torch.where(top > 0, x / torch.where(top > 0, top, 1.0), 0.0)
    return (x * 255.0).to(torch.uint8)  # float -> uint8 truncates, like to_pil_image's .byte()


def upscale_bicubic(maps8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bicubic resize of each uint8 map [N, h, w] to ``size`` (H, W): uint8 [N, H, W] on the CPU.

    The authors' ``cam.resize((im_size, im_size), resample=Image.BICUBIC)``; PIL works on 8-bit
    images, so the result is 8-bit too. One small resize per map (microseconds at 8x8 -> 224x224).
    """
    if maps8.dtype != torch.uint8 or maps8.ndim != 3:
        raise ValueError(f"expected uint8 maps [N, h, w], got {maps8.dtype} {tuple(maps8.shape)}")
    h, w = size
    src = maps8.detach().cpu().numpy()
    out = np.empty((src.shape[0], h, w), dtype=np.uint8)
    for i, m in enumerate(src):
        out[i] = np.asarray(Image.fromarray(m, mode="L").resize((w, h), resample=Image.Resampling.BICUBIC))
    return torch.from_numpy(out)


def level_sigma(q: int) -> float:
    """The blur sigma of level ``q / 10`` as ``blur_image`` computes it, in the same float64 steps:
    ``blur_amount = round(max_blur - v, 1)`` (numpy's rounding, since ``v`` is a numpy float), then
    ``get_curve``: ``(1 / max_blur**3) * blur_amount**4``."""
    v = np.float64(q) / np.float64(10.0)  # np.around(x, 1) = rint(x * 10) / 10
    blur_amount = round(MAX_BLUR - v, 1)
    return float((1 / (MAX_BLUR ** (BLUR_ORDER - 1))) * (blur_amount**BLUR_ORDER))


def paper_blur_levels(up8: torch.Tensor, mode: str, smooth_sigma: float = 5.0) -> torch.Tensor:
    """Per-pixel blur levels of ``blur_image``, as integers ``q`` (level ``v = q / 10``): long [N, H, W].

    ``up8``: the upscaled uint8 maps. Mode ``background`` uses the map, ``object`` uses ``255 - map``
    (uint8 arithmetic, as the authors' ``255 - cam``). The map is smoothed by SciPy into uint8
    (truncating), divided by ``max / 10`` and rounded to 0.1. A map whose smoothed maximum is 0 (only
    an empty map in ``background`` mode) has no levels; the authors' code would fail on it, so its
    levels are all 0 here and callers exclude it (see ``is_empty``).
    """
    if mode not in ("background", "object"):
        raise ValueError(f"mode must be 'background' or 'object', got {mode!r}")
    if up8.dtype != torch.uint8 or up8.ndim != 3:
        raise ValueError(f"expected uint8 maps [N, H, W], got {up8.dtype} {tuple(up8.shape)}")
    import scipy.ndimage  # here: only the blur needs it, not every model process

    m = up8.detach().cpu().numpy()
    if mode == "object":
        m = np.uint8(255) - m
    smooth = scipy.ndimage.gaussian_filter(m, smooth_sigma, axes=(1, 2))  # uint8 out: truncated
    top = smooth.reshape(len(smooth), -1).max(axis=1).astype(np.float64)
    ok = top > 0
    scaled = smooth / (np.where(ok, top, 1.0) / MAX_BLUR)[:, None, None]
    q = np.rint(scaled * 10.0)
    q[~ok] = 0
    return torch.from_numpy(q.astype(np.int64))


def paper_blur(images8: torch.Tensor, levels: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``blur_image`` on every colour channel: each pixel takes the value of SciPy's uint8 Gaussian blur
    of its channel with its level's sigma (times ``scale``; 1 = the authors' sigmas in pixels).

    ``images8``: uint8 [N, C, H, W]; ``levels``: [N, H, W] from ``paper_blur_levels``. Each level is
    blurred once for the images that hold it. Returns uint8 [N, C, H, W] on the CPU.
    """
    return paper_blur_many(images8, [levels], scale)[0]


def paper_blur_many(images8: torch.Tensor, levels: Sequence[torch.Tensor], scale: float = 1.0) -> list[torch.Tensor]:
    """``[paper_blur(images8, lv, scale) for lv in levels]``, bit for bit, blurring each (image, level) once
    for all of them: the level maps of several models (and both modes) over one batch of images share most
    of their levels, and the blur (SciPy, kernels up to 800 taps) is what costs. SciPy filters each image
    on its own (``axes=(2, 3)``), so an image's blur does not depend on which other images share the call.
    """
    if images8.dtype != torch.uint8 or images8.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images8.dtype} {tuple(images8.shape)}")
    for lv in levels:
        if lv.shape != (images8.shape[0], *images8.shape[-2:]):
            raise ValueError(f"levels {tuple(lv.shape)} do not match images {tuple(images8.shape)}")
    import scipy.ndimage  # here: only the blur needs it, not every model process

    src = images8.detach().cpu().numpy()
    lvs = [lv.detach().cpu().numpy() for lv in levels]
    outs = [src.copy() for _ in lvs]
    qs = np.unique(np.concatenate([np.unique(lv) for lv in lvs])) if lvs else []
    for q in np.asarray(qs).tolist():
        sigma = level_sigma(int(q)) * scale
        if sigma == 0:  # the authors' "if blur_amount != 0"
            continue
        ats = [lv == q for lv in lvs]  # [N, H, W] each
        holds = [at.any(axis=(1, 2)) for at in ats]
        rows = np.flatnonzero(np.logical_or.reduce(holds))
        blurred = scipy.ndimage.gaussian_filter(src[rows], sigma, axes=(2, 3))  # uint8 out: truncated
        for at, hold, out in zip(ats, holds, outs, strict=True):
            mine = np.flatnonzero(hold)
            if len(mine) == 0:
                continue
            part = blurred[np.searchsorted(rows, mine)]
            sub = out[mine]
            np.copyto(sub, part, where=at[mine][:, None])
            out[mine] = sub
    return [torch.from_numpy(o) for o in outs]


def to_images8(images: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] -> the uint8 image the authors' scripts read from disk (round to nearest):
    exact for images decoded from 8-bit files at the model's input size. uint8 on the CPU."""
    return torch.round(images.detach().to("cpu", torch.float64).clamp(0, 1) * 255.0).to(torch.uint8)


def from_images8(images8: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """uint8 images -> ``ToTensor()``'s float (``x / 255``) in ``like``'s dtype and device."""
    return (images8.to(torch.float32) / 255.0).to(dtype=like.dtype, device=like.device)


def quantise_like_skimage(noisy: torch.Tensor) -> torch.Tensor:
    """``(noisy * 255).astype(np.uint8)`` of a float64 image from ``skimage.util.random_noise``: truncated.
    ``noisy``: float64 in [0, 1] (the 8-bit image times ``1 / 255``, with salt 1 and pepper 0)."""
    return (noisy.to(torch.float64) * 255.0).to(torch.uint8)


def skimage_float(images8: torch.Tensor) -> torch.Tensor:
    """``skimage.img_as_float`` of uint8 images: ``x * (1 / 255)`` in float64."""
    return images8.to(torch.float64) * (1.0 / 255.0)


__all__ = [
    "MAX_BLUR",
    "from_images8",
    "level_sigma",
    "paper_blur",
    "paper_blur_levels",
    "paper_blur_many",
    "quantise_like_skimage",
    "skimage_float",
    "to_images8",
    "to_uint8_truncated",
    "upscale_bicubic",
]
