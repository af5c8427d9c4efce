"""The faster noise, geometry and blur code gives the very bits of the straightforward versions.

Each reference below is the implementation the service had before the speed-up (kept here, not in
the service), and every comparison is exact (``torch.equal``, NaN-aware ``np.array_equal``): these
changes are pure speed-ups, and the reports' determinism contract is bitwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from etm.measures.base import BatchContext
from etm.measures.geometry import GeometryMeasure
from etm.measures.noise import noise_stream
from etm.models.loader import load_model
from etm.ops.geometry import _COMPASS, PAPER_TRANSFORMS, _shift, get_transform, resolve_transforms, shift_pixels
from etm.ops.maps import minmax01
from etm.ops.noise import salt_and_pepper
from etm.ops.paper import level_sigma, paper_blur, paper_blur_levels, paper_blur_many
from etm.ops.random import (
    _GAMMA,
    _M1,
    _M2,
    _signed,
    keyed_bits,
    keyed_permutation,
    keyed_uniform,
    mix64,
    mix64_int,
    stream_id,
)
from etm.ops.ssim import pearson, ssim
from etm.salience.registry import compute_salience
from tests.helpers.tiny import tiny_family

# ----------------------------------------------------------------------------------------------
# keyed random numbers: whole-tensor reference


def _ref_srl(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def _ref_mix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _ref_srl(x, 30)) * _signed(_M1)
    x = (x ^ _ref_srl(x, 27)) * _signed(_M2)
    return x ^ _ref_srl(x, 31)


def _ref_keyed_bits(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    seeds = seeds.to(torch.int64)
    skey = _signed(mix64_int(stream ^ 0x5851F42D4C957F2D))
    keys = _ref_mix64(_ref_mix64(seeds) ^ skey)
    count = math.prod(shape)
    ctr = (torch.arange(count, dtype=torch.int64) + 1) * _signed(_GAMMA)
    return _ref_mix64(keys.view(-1, 1) + ctr.view(1, -1)).view(seeds.shape[0], *shape)


def _ref_keyed_uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    return _ref_srl(_ref_keyed_bits(seeds, stream, shape), 40).to(torch.float32) * (1.0 / (1 << 24))


SEEDS = torch.tensor([0, 1, -5, 2**62 + 17, -(2**63), 2**63 - 1, 12345], dtype=torch.int64)


def test_mix64_equals_the_whole_tensor_version() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (5000,), dtype=torch.int64, generator=g)
    before = x.clone()
    assert torch.equal(mix64(x), _ref_mix64(x))
    assert torch.equal(x, before)  # the input is not modified


# Per-image sizes below, at and above one hash block (2**15), and not multiples of it: rows grouped
# into blocks, single rows, rows split into column ranges with a ragged end.
@pytest.mark.parametrize("shape", [(1,), (3, 5), (3, 64, 64), (1 << 15,), ((1 << 15) + 3,), (3, 224, 224), (0,)])
def test_keyed_bits_and_uniform_equal_the_whole_tensor_version(shape: tuple[int, ...]) -> None:
    for stream in (0, 7, 2**62 + 3):
        got = keyed_bits(SEEDS, stream, shape)
        assert got.shape == (len(SEEDS), *shape)
        assert torch.equal(got, _ref_keyed_bits(SEEDS, stream, shape))
        u = keyed_uniform(SEEDS, stream, shape)
        assert u.dtype == torch.float32
        assert torch.equal(u, _ref_keyed_uniform(SEEDS, stream, shape))


def test_keyed_random_with_no_images_and_permutation() -> None:
    none = torch.zeros(0, dtype=torch.int64)
    assert keyed_bits(none, 1, (4,)).shape == (0, 4) and keyed_uniform(none, 1, (4, 2)).shape == (0, 4, 2)
    ref = torch.argsort(_ref_keyed_bits(SEEDS, 9, (1000,)), dim=1, stable=True)
    assert torch.equal(keyed_permutation(SEEDS, 9, 1000), ref)


# ----------------------------------------------------------------------------------------------
# shifts: the gather reference


def _ref_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (4, 224, 224), (1, 3, 5, 9), (2, 1, 1)])
def test_shifts_equal_the_gather(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    h, w = shape[-2:]
    for x in (torch.rand(shape, generator=g), torch.rand(shape, generator=g, dtype=torch.float64),
              torch.rand(shape, generator=g) > 0.5):
        for name in PAPER_TRANSFORMS:
            if not name.startswith("shift_"):
                continue
            got, valid = get_transform(name, h, w)(x)
            uy, ux = _COMPASS[name[6:]]
            py, px = shift_pixels(h, w)
            assert got.is_contiguous() and torch.equal(got, _ref_shift(x, uy * py, ux * px)), name
        # Shifts by up to the whole side and beyond, and a non-contiguous input.
        for dy, dx in ((1, -2), (-1, 3), (h - 1, 0), (0, -(w - 1)), (h, w), (-h - 3, 2), (2, w + 1)):
            fn, _ = _shift(dy, dx)
            assert torch.equal(fn(x), _ref_shift(x, dy, dx)), (dy, dx)
            t = x.transpose(-2, -1)
            fn, _ = _shift(dx, dy)
            assert torch.equal(fn(t), _ref_shift(t, dx, dy)), (dx, dy)


# ----------------------------------------------------------------------------------------------
# salt and pepper on the whole-tensor random numbers


def test_salt_and_pepper_equals_the_whole_tensor_version() -> None:
    images = torch.rand(5, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    seeds = torch.arange(5, dtype=torch.int64) * 31 + 7
    for amount in (0.01, 0.5, 1.0):
        stream = noise_stream(amount)
        flipped = _ref_keyed_uniform(seeds, stream_id("s&p.flip", stream), (3, 40, 36)) < amount
        salted = _ref_keyed_uniform(seeds, stream_id("s&p.salt", stream), (3, 40, 36)) < 0.5
        ref = torch.where(flipped & salted, torch.ones_like(images), images)
        ref = torch.where(flipped & ~salted, torch.zeros_like(images), ref)
        assert torch.equal(salt_and_pepper(images, amount, seeds, stream), ref)


# ----------------------------------------------------------------------------------------------
# the geometry measure: the per-image loop as it was (every transform's valid mask passed on)


def _ref_geometry_columns(m: GeometryMeasure, ctx: BatchContext) -> dict[str, np.ndarray]:
    n, k = len(ctx.keys), ctx.n_runs
    h, w = ctx.images.shape[-2:]
    transforms, _ = resolve_transforms(m.requested(), h, w)
    cols = {c: np.full((n, k, len(transforms)), np.nan) for c in ("ssim", "pearson", "flip")}
    for t, tf in enumerate(transforms):
        moved, valid = tf(ctx.images)
        for r, clean in enumerate(ctx.clean):
            res = ctx.salience_fn(r, moved)
            expected, _ = tf(clean.upsampled)
            a, b = minmax01(res.upsampled, valid), minmax01(expected, valid)
            excluded = (~((res.upsampled > 0) & valid).flatten(1).any(dim=1)).numpy() | (
                ~((expected > 0) & valid).flatten(1).any(dim=1)).numpy()
            s = ssim(a, b, 1.0, mask=valid).numpy()
            p = pearson(a, b, mask=valid).numpy()
            s[excluded] = np.nan
            p[excluded] = np.nan
            cols["ssim"][:, r, t], cols["pearson"][:, r, t] = s, p
            cols["flip"][:, r, t] = (res.predicted != clean.predicted).numpy()
    return cols


def test_geometry_measure_equals_the_masked_loop(tmp_path) -> None:
    """Two exported TinyNet runs, Grad-CAM maps (bilinear upsampled, some empty over a region),
    the paper's transforms and two extra ones, at 32 px (2-px shifts)."""
    models = [load_model(p, threads=1) for p in tiny_family(tmp_path, k=2)]
    g = torch.Generator().manual_seed(3)
    images = torch.rand(7, 3, 32, 32, generator=g)
    images[0] = 0.0  # a flat image: a flat or empty map
    images[1, :, :16] = 1.0
    seeds = torch.arange(7, dtype=torch.int64)

    def salience_fn(run: int, x: torch.Tensor):
        return compute_salience(models[run], x, "gradcam")

    ctx = BatchContext(
        keys=[f"i{i}" for i in range(7)], images=images, labels=torch.full((7,), -1), masks=None,
        has_mask=torch.zeros(7, dtype=torch.bool), image_seeds=seeds, clean=[salience_fn(r, images) for r in (0, 1)],
        salience_fn=salience_fn, logits_fn=lambda run, x: models[run].logits(x),
        probabilities_fn=lambda run, logits: models[run].probabilities(logits),
    )
    m = GeometryMeasure({"extra_transforms": ["rot_15", "scale_1.1"]})
    got, ref = m.per_image(ctx), _ref_geometry_columns(m, ctx)
    for c in ("ssim", "pearson", "flip"):
        assert got[c].shape == ref[c].shape and np.array_equal(got[c], ref[c], equal_nan=True), c
    assert np.isfinite(ref["ssim"]).sum() > 0




# ----------------------------------------------------------------------------------------------
# paper blur shared between runs and modes: one paper_blur per level map (the code before sharing)


def test_paper_blur_many_equals_one_paper_blur_per_level_map() -> None:
    g = torch.Generator().manual_seed(11)
    images8 = (torch.rand(5, 3, 40, 44, generator=g) * 255).to(torch.uint8)
    images8[3, :, :12] = 77  # a flat region: where a float sum lands on an integer and truncation decides
    maps = [(torch.rand(5, 40, 44, generator=g) ** 3 * 255).to(torch.uint8) for _ in range(3)]
    maps[1][2] = 0  # an empty map: no levels in background mode
    levels = [paper_blur_levels(m, mode, 3.0) for m in maps for mode in ("background", "object")]
    levels.append(torch.full((5, 40, 44), 100))  # nothing blurred
    levels[0][4] = 37  # one image at one level only
    for scale in (1.0, 0.5):
        shared = paper_blur_many(images8, levels, scale)
        assert len(shared) == len(levels)
        for lv, out in zip(levels, shared, strict=True):
            assert torch.equal(out, paper_blur(images8, lv, scale))
    # paper_blur itself is the code before sharing: each level blurred for the images holding it
    lv = levels[1]
    src, ref = images8.numpy(), images8.numpy().copy()
    for q in np.unique(lv.numpy()).tolist():
        at = lv.numpy() == q
        rows = np.flatnonzero(at.any(axis=(1, 2)))
        if level_sigma(q) == 0:
            continue
        blurred = scipy.ndimage.gaussian_filter(src[rows], level_sigma(q), axes=(2, 3))
        sel = np.broadcast_to(at[rows][:, None], blurred.shape)
        sub = ref[rows]
        sub[sel] = blurred[sel]
        ref[rows] = sub
    assert np.array_equal(paper_blur(images8, lv).numpy(), ref)
    assert paper_blur_many(images8, []) == []
