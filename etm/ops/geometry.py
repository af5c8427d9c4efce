"""Geometric transforms of images and maps, with the mask of pixels that carry real content.

A ``Transform`` acts on the last two axes of any tensor (images [N, C, H, W], maps [N, H, W]), so
the same transform can be applied to an image and to its salience map: the geometry measure
compares ``S(T(x))`` with ``T(S(x))`` on the pixels where ``valid`` is True (pixels that came from
edge-replicate padding or from outside the source are not content and are excluded).

Registry names:
    paper: ``flip_lr``, ``flip_ud``, ``rot90_cw``, ``rot90_ccw``, ``shift_n``, ``shift_ne``,
        ``shift_e``, ``shift_se``, ``shift_s``, ``shift_sw``, ``shift_w``, ``shift_nw``.
    extra: ``rot_<degrees>`` (counter-clockwise as seen on screen, e.g. ``rot_15``, ``rot_-7.5``) and
        ``scale_<factor>`` (about the centre, e.g. ``scale_1.1`` zooms in), bilinear.

A shift ``shift_<dir>`` moves the content ``round(16 * H / 224)`` rows and ``round(16 * W / 224)``
columns towards compass direction ``dir`` (north = up), replicating the edge into the uncovered
border, and keeps the input size (the paper's 16 px at 224 px, scaled with the input).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAPER_TRANSFORMS: tuple[str, ...] = (
    "flip_lr",
    "flip_ud",
    "rot90_cw",
    "rot90_ccw",
    "shift_n",
    "shift_ne",
    "shift_e",
    "shift_se",
    "shift_s",
    "shift_sw",
    "shift_w",
    "shift_nw",
)

# (row, column) unit steps; north is up (negative rows).
_COMPASS: dict[str, tuple[int, int]] = {
    "n": (-1, 0),
    "ne": (-1, 1),
    "e": (0, 1),
    "se": (1, 1),
    "s": (1, 0),
    "sw": (1, -1),
    "w": (0, -1),
    "nw": (-1, -1),
}

ValidFn = Callable[[int, int, torch.device], torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """A geometric transform of the last two axes.

    Attributes:
        name: registry name.
        fn: the transform of a tensor [..., H, W] -> [..., H', W'].
        valid_fn: ``valid_fn(H, W, device)`` -> bool [H', W'], True where the output pixel comes
            from inside the input.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    valid_fn: ValidFn

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform ``x`` [N, ..., H, W]; return it and the valid mask bool [N, H', W']."""
        if x.ndim < 3:
            raise ValueError(f"expected [N, ..., H, W], got shape {tuple(x.shape)}")
        y = self.fn(x)
        valid = self.valid_fn(x.shape[-2], x.shape[-1], x.device)
        return y, valid.unsqueeze(0).expand(x.shape[0], *valid.shape)


def _all_valid(transpose: bool = False) -> ValidFn:
    def valid(h: int, w: int, device: torch.device) -> torch.Tensor:
        return torch.ones((w, h) if transpose else (h, w), dtype=torch.bool, device=device)

    return valid


def shift_pixels(height: int, width: int) -> tuple[int, int]:
    """The paper's translation at this input size: 16 px at 224 px, rounded half up."""
    return math.floor(16 * height / 224 + 0.5), math.floor(16 * width / 224 + 0.5)


def _shift(dy: int, dx: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], ValidFn]:
    """Move content by (dy, dx) pixels with edge replication: out[i, j] = x[clamp(i - dy), clamp(j - dx)]."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if abs(dy) >= h or abs(dx) >= w:  # nothing of the content stays: the general gather
            rows = (torch.arange(h, device=x.device) - dy).clamp(0, h - 1)
            cols = (torch.arange(w, device=x.device) - dx).clamp(0, w - 1)
            return x.index_select(-2, rows).index_select(-1, cols)
        # The same copies as the gather, as three slice copies (5 to 25x faster than two
        # index_selects on the last axes): the kept block moves by (dy, dx), then the uncovered
        # columns of its rows repeat their edge column, then the uncovered rows the nearest filled row.
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        rd, rs = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        cd, cs = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
        out[..., rd, cd] = x[..., rs, cs]
        if dx > 0:
            out[..., rd, :dx] = out[..., rd, dx : dx + 1]
        elif dx < 0:
            out[..., rd, w + dx :] = out[..., rd, w + dx - 1 : w + dx]
        if dy > 0:
            out[..., :dy, :] = out[..., dy : dy + 1, :]
        elif dy < 0:
            out[..., h + dy :, :] = out[..., h + dy - 1 : h + dy, :]
        return out

    def valid(h: int, w: int, device: torch.device) -> torch.Tensor:
        r = torch.arange(h, device=device) - dy
        c = torch.arange(w, device=device) - dx
        return ((r >= 0) & (r < h)).view(-1, 1) & ((c >= 0) & (c < w)).view(1, -1)

    return fn, valid


def _affine_source(h: int, w: int, matrix: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Source pixel coordinates (x, y) [H, W, 2] of each output pixel under ``src = M @ (p - c) + c``,
    in pixel units about the image centre (so non-square images are not distorted)."""
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys = torch.arange(h, device=device, dtype=torch.float64) - cy
    xs = torch.arange(w, device=device, dtype=torch.float64) - cx
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    p = torch.stack([gx, gy], dim=-1)  # [H, W, 2] as (x, y)
    return p @ matrix.to(device, torch.float64).T + torch.tensor([cx, cy], device=device, dtype=torch.float64)


def _affine(matrix: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], ValidFn]:
    """Bilinear resampling at ``src = matrix @ (p - c) + c``; valid where src lies within the pixel
    centres of the input (no extrapolation)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        src = _affine_source(h, w, matrix, x.device)
        grid = torch.stack([src[..., 0] / max(w - 1, 1), src[..., 1] / max(h - 1, 1)], -1) * 2 - 1
        # All leading axes as channels of one batch item: one grid serves every image and channel.
        flat = x.reshape(1, -1, h, w)
        out = F.grid_sample(
            flat, grid.to(flat.dtype).unsqueeze(0), mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.reshape(x.shape)

    def valid(h: int, w: int, device: torch.device) -> torch.Tensor:
        src = _affine_source(h, w, matrix, device)
        eps = 1e-6  # exact rotations land on integer coordinates up to rounding
        return (
            (src[..., 0] >= -eps) & (src[..., 0] <= w - 1 + eps) & (src[..., 1] >= -eps) & (src[..., 1] <= h - 1 + eps)
        )

    return fn, valid


def rotation(degrees: float) -> Transform:
    """Rotate the content ``degrees`` counter-clockwise (as displayed, rows going down) about the centre."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # Inverse map (output -> source) in (x right, y down) coordinates.
    fn, valid = _affine(torch.tensor([[c, -s], [s, c]], dtype=torch.float64))
    return Transform(f"rot_{degrees:g}", fn, valid)


def scaling(factor: float) -> Transform:
    """Scale the content by ``factor`` about the centre (> 1 zooms in; < 1 leaves a border invalid)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    fn, valid = _affine(torch.eye(2, dtype=torch.float64) / factor)
    return Transform(f"scale_{factor:g}", fn, valid)


def get_transform(name: str, height: int, width: int) -> Transform:
    """The transform called ``name`` for inputs of size (height, width).

    Raises:
        ValueError: unknown name, or a 90-degree rotation of a non-square input (it would change the
            shape, so the maps could not be compared pixel by pixel).
    """
    if name == "flip_lr":
        return Transform(name, lambda x: x.flip(-1), _all_valid())
    if name == "flip_ud":
        return Transform(name, lambda x: x.flip(-2), _all_valid())
    if name in ("rot90_cw", "rot90_ccw"):
        if height != width:
            raise ValueError(f"{name} needs a square input, got {height}x{width}")
        k = -1 if name == "rot90_cw" else 1  # torch.rot90 with k > 0 turns counter-clockwise
        return Transform(name, lambda x: torch.rot90(x, k, dims=(-2, -1)), _all_valid(transpose=True))
    if name.startswith("shift_") and name[6:] in _COMPASS:
        uy, ux = _COMPASS[name[6:]]
        py, px = shift_pixels(height, width)
        fn, valid = _shift(uy * py, ux * px)
        return Transform(name, fn, valid)
    m = re.fullmatch(r"(rot|scale)_([-+]?\d+(?:\.\d+)?)", name)
    if m:
        value = float(m.group(2))
        t = rotation(value) if m.group(1) == "rot" else scaling(value)
        return Transform(name, t.fn, t.valid_fn)
    raise ValueError(
        f"unknown transform {name!r}; choose from {list(PAPER_TRANSFORMS)}, rot_<degrees> or scale_<factor>"
    )


def resolve_transforms(names: Sequence[str], height: int, width: int) -> tuple[list[Transform], list[str]]:
    """Build the named transforms; on a non-square input skip the 90-degree rotations.

    Returns:
        The transforms in the given order and notes explaining anything skipped (for the report).
    """
    out: list[Transform] = []
    notes: list[str] = []
    for name in dict.fromkeys(names):  # de-duplicate, keep order
        if name in ("rot90_cw", "rot90_ccw") and height != width:
            notes.append(
                f"{name} skipped: the input is {height}x{width}, not square, so a 90-degree "
                "rotation changes the shape and the maps cannot be compared pixel by pixel"
            )
            continue
        out.append(get_transform(name, height, width))
    return out, notes
