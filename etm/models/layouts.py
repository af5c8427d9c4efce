"""How a target layer's activation maps onto the image: a CNN feature map, an NHWC stage or a token grid.

Every CAM method works on an activation ``[N, K, h, w]`` (channels first, one cell per image region).
Transformers hand us other shapes, and this module turns them into that one:

- ``nchw``: a convolutional feature map ``[N, K, h, w]``, as it is.
- ``nhwc``: a channels-last stage output ``[N, h, w, K]`` (Swin, and timm's NHWC heads), permuted.
- ``tokens``: a token sequence ``[N, T, K]`` (ViT, DeiT, BEiT, CLIP-ViT): the ``T - prefix`` patch
  tokens reshaped to the patch grid, the ``prefix`` class, distillation and register tokens (which
  come first, as in timm, Hugging Face and open_clip) dropped. The grid is read off the input size:
  the one ``gh x gw = T - prefix`` with the same whole patch size along both axes, and the smallest
  prefix that allows one (pytorch-grad-cam asks for this as a hand-written ``reshape_transform``).

``from_grid`` inverts ``to_grid`` (putting the prefix tokens back), so a program can be cut at the
target and differentiated with respect to the grid itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from etm.errors import BadInput

Kind = Literal["nchw", "nhwc", "tokens"]
MAX_PREFIX_TOKENS = 16  # class + distillation + register tokens; DINOv2 and timm's reg4 models have 5


@dataclass(frozen=True)
class Layout:
    kind: Kind
    grid: tuple[int, int]
    prefix: int = 0

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The activation as ``[N, K, h, w]``."""
        if self.kind == "nchw":
            return x
        if self.kind == "nhwc":
            return x.permute(0, 3, 1, 2)
        n, _, k = x.shape
        return x[:, self.prefix :, :].reshape(n, *self.grid, k).permute(0, 3, 1, 2)

    def from_grid(self, g: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """``g`` ([N, K, h, w]) back in the layer's own layout; prefix tokens are taken from ``raw``."""
        if self.kind == "nchw":
            return g
        if self.kind == "nhwc":
            return g.permute(0, 2, 3, 1)
        n, k = g.shape[:2]
        patches = g.permute(0, 2, 3, 1).reshape(n, -1, k)
        return torch.cat([raw[:, : self.prefix, :].to(patches.dtype), patches], dim=1)

    def describe(self) -> str:
        h, w = self.grid
        if self.kind == "tokens":
            return f"tokens: {h}x{w} patch grid" + (f", {self.prefix} prefix token(s) dropped" if self.prefix else "")
        return f"{self.kind} {h}x{w} map"


def _same_stride(h: int, w: int, size: tuple[int, int]) -> bool:
    """A grid of h x w cells covers an H x W image with (about) the same stride along both axes."""
    return h > 0 and w > 0 and abs(size[0] / h - size[1] / w) <= 0.5 * max(size[0] / h, size[1] / w) / max(h, w)


def token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(prefix, (gh, gw)) for ``tokens`` tokens of an ``size`` image, or None when no patch grid fits."""
    height, width = size
    for prefix in range(0, min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        n = tokens - prefix
        for gh in range(1, n + 1):
            if n % gh:
                continue
            gw = n // gh
            if height % gh == 0 and width % gw == 0 and height // gh == width // gw:
                return prefix, (gh, gw)
    return None


def infer_layout(shape: tuple[int, ...], size: tuple[int, int], hint: Kind | None = None) -> Layout | None:
    """The layout of an activation of ``shape`` (batch included) for ``size`` images; None if none fits.

    A 4-D activation is channels-first unless ``hint`` says otherwise or only the channels-last
    reading has the image's aspect (``[N, 7, 7, 768]`` from a 224 px Swin); a 3-D one is a token
    sequence."""
    if len(shape) == 4:
        a, b, c = shape[1:]
        if hint == "nhwc" or (hint is None and not _same_stride(b, c, size) and _same_stride(a, b, size)):
            return Layout("nhwc", (a, b))
        return Layout("nchw", (b, c))
    if len(shape) == 3 and hint in (None, "tokens"):
        found = token_grid(shape[1], size)
        if found is not None:
            return Layout("tokens", found[1], found[0])
    return None


def layout_of(layer: str, shape: tuple[int, ...], size: tuple[int, int], hint: Kind | None = None) -> Layout:
    """``infer_layout``, or BadInput naming the layer and why none fits."""
    found = infer_layout(shape, size, hint)
    if found is None:
        raise BadInput(
            f"layer {layer!r} gives an activation of shape {list(shape)}, which is neither a feature map "
            f"[N, K, h, w] / [N, h, w, K] nor a token sequence [N, T, K] whose patch grid fits "
            f"{size[0]}x{size[1]} images"
        )
    return found
