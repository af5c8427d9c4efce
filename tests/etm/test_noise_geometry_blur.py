"""Ops of the noise, geometry and degradation measures against scipy/skimage/numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from etm.ops.blur import gaussian_blur, reflect_indices
from etm.ops.geometry import PAPER_TRANSFORMS, get_transform, resolve_transforms, shift_pixels
from etm.ops.noise import salt_and_pepper
from etm.ops.paper import (
    level_sigma,
    paper_blur,
    paper_blur_levels,
    quantise_like_skimage,
    skimage_float,
    to_uint8_truncated,
    upscale_bicubic,
)
from etm.ops.random import (
    keyed_bits,
    keyed_permutation,
    keyed_uniform,
    mix64,
    mix64_int,
    stream_id,
)
from tests.helpers import authors_code

# ----------------------------------------------------------------------------------------------
# keyed random numbers


def _u64(x: int) -> int:
    return x & ((1 << 64) - 1)


def _ref_bits(seed: int, stream: int, i: int) -> int:
    """Pure-Python uint64 reference of keyed_bits for one element."""
    key = mix64_int(mix64_int(_u64(seed)) ^ mix64_int(stream ^ 0x5851F42D4C957F2D))
    return mix64_int(key + (i + 1) * 0x9E3779B97F4A7C15)


def test_mix64_matches_uint64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (1000,), dtype=torch.int64, generator=g)
    got = [_u64(v) for v in mix64(x).tolist()]
    assert got == [mix64_int(_u64(v)) for v in x.tolist()]


def test_keyed_bits_match_reference_and_are_batch_independent() -> None:
    seeds = torch.tensor([0, 1, -5, 2**62 + 17], dtype=torch.int64)
    bits = keyed_bits(seeds, 7, (3, 5))
    assert bits.shape == (4, 3, 5)
    for n, s in enumerate(seeds.tolist()):
        for i in (0, 1, 14):
            assert _u64(bits[n].flatten()[i].item()) == _ref_bits(s, 7, i)
    # Another batch composition gives the same rows.
    again = keyed_bits(seeds[[3, 0]], 7, (3, 5))
    assert torch.equal(again, bits[[3, 0]])


def test_keyed_uniform_range_moments_and_streams() -> None:
    seeds = torch.arange(4, dtype=torch.int64)
    u = keyed_uniform(seeds, stream_id("test", 0), (50_000,))
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    other = keyed_uniform(seeds, stream_id("test", 1), (50_000,))
    assert not torch.equal(u, other)
    # Streams and images are uncorrelated.
    assert abs(np.corrcoef(u[0].numpy(), other[0].numpy())[0, 1]) < 0.02
    assert abs(np.corrcoef(u[0].numpy(), u[1].numpy())[0, 1]) < 0.02
    assert stream_id("test", 0) == stream_id("test", 0) and stream_id("a") != stream_id("b")


def test_keyed_permutation() -> None:
    seeds = torch.tensor([3, 4], dtype=torch.int64)
    p = keyed_permutation(seeds, 1, 100)
    assert torch.equal(p.sort(dim=1).values, torch.arange(100).expand(2, 100))
    assert not torch.equal(p[0], p[1])
    assert torch.equal(p, keyed_permutation(seeds, 1, 100))


# ----------------------------------------------------------------------------------------------
# salt and pepper


@pytest.mark.parametrize("amount", [0.01, 0.1, 0.5, 0.75])
def test_salt_and_pepper_statistics(amount: float) -> None:
    images = torch.full((4, 3, 64, 64), 0.25)
    seeds = torch.tensor([11, 12, 13, 14], dtype=torch.int64)
    noisy = salt_and_pepper(images, amount, seeds, stream=2)
    replaced = noisy != 0.25
    n = replaced.numel()
    frac = replaced.float().mean().item()
    assert abs(frac - amount) < 5 * math.sqrt(amount * (1 - amount) / n)
    salt = (noisy == 1).sum().item() / replaced.sum().item()
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / replaced.sum().item())
    assert set(torch.unique(noisy).tolist()) <= {0.0, 0.25, 1.0}
    # Channels are drawn independently (skimage draws per element of the [H, W, 3] array).
    all3 = replaced.all(dim=1).float().mean().item()
    assert abs(all3 - amount**3) < 5 * math.sqrt(amount**3 / (4 * 64 * 64)) + 1e-3


def test_salt_and_pepper_matches_skimage_distribution() -> None:
    from skimage.util import random_noise

    img = np.full((64, 64, 3), 0.3)
    ref = random_noise(img, mode="s&p", amount=0.2, salt_vs_pepper=0.5, rng=0)
    ours = salt_and_pepper(torch.full((1, 3, 64, 64), 0.3), 0.2, torch.tensor([0]))
    for value in (0.0, 1.0):
        assert abs((ref == value).mean() - (ours == value).float().mean().item()) < 0.015


def test_salt_and_pepper_edges_and_determinism() -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seeds = torch.tensor([5, 6, 7], dtype=torch.int64)
    assert torch.equal(salt_and_pepper(images, 0.0, seeds), images)
    full = salt_and_pepper(images, 1.0, seeds)
    assert set(torch.unique(full).tolist()) == {0.0, 1.0}
    a = salt_and_pepper(images, 0.3, seeds, stream=1)
    assert torch.equal(a, salt_and_pepper(images, 0.3, seeds, stream=1))
    assert torch.equal(a[[2, 0]], salt_and_pepper(images[[2, 0]], 0.3, seeds[[2, 0]], stream=1))
    assert not torch.equal(a, salt_and_pepper(images, 0.3, seeds, stream=2))
    with pytest.raises(ValueError):
        salt_and_pepper(images, 1.5, seeds)


# ----------------------------------------------------------------------------------------------
# geometry


def _np_transform(name: str, x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference on [H, W] arrays: transformed array and valid mask."""
    h, w = x.shape
    ones = np.ones((h, w), bool)
    if name == "flip_lr":
        return x[:, ::-1], ones
    if name == "flip_ud":
        return x[::-1], ones
    if name == "rot90_cw":
        return np.rot90(x, -1), ones
    if name == "rot90_ccw":
        return np.rot90(x, 1), ones
    steps = {"n": (-1, 0), "ne": (-1, 1), "e": (0, 1), "se": (1, 1), "s": (1, 0), "sw": (1, -1),
             "w": (0, -1), "nw": (-1, -1)}[name[6:]]
    dy, dx = steps[0] * d, steps[1] * d
    padded = np.pad(x, d, mode="edge")
    out = padded[d - dy: d - dy + h, d - dx: d - dx + w]
    valid = np.zeros((h + 2 * d, w + 2 * d), bool)
    valid[d:d + h, d:d + w] = True
    return out, valid[d - dy: d - dy + h, d - dx: d - dx + w]


@pytest.mark.parametrize("name", PAPER_TRANSFORMS)
def test_paper_transforms_match_numpy(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 28, 28, generator=g)
    t = get_transform(name, 28, 28)
    d = shift_pixels(28, 28)[0]
    assert d == 2
    y, valid = t(images)
    assert valid.shape == (2, 28, 28) and valid.dtype == torch.bool
    for n in range(2):
        for c in range(3):
            ref, ref_valid = _np_transform(name, images[n, c].numpy(), d)
            np.testing.assert_array_equal(y[n, c].numpy(), ref)
            np.testing.assert_array_equal(valid[n].numpy(), ref_valid)
    # The same transform on a map [N, H, W] agrees with the image channel.
    ym, vm = t(images[:, 0])
    assert torch.equal(ym, y[:, 0]) and torch.equal(vm, valid)
    if name.startswith("shift_"):
        assert valid[0].sum().item() < 28 * 28


def test_shift_size_scales_with_input_and_geometry_directions() -> None:
    assert shift_pixels(224, 224) == (16, 16)
    assert shift_pixels(112, 448) == (8, 32)
    x = torch.zeros(1, 1, 224, 224)
    x[0, 0, 100, 100] = 1
    moved = {n: get_transform(n, 224, 224)(x)[0][0, 0].nonzero().tolist() for n in
             ("shift_n", "shift_e", "shift_sw", "rot90_cw")}
    assert moved["shift_n"] == [[84, 100]]
    assert moved["shift_e"] == [[100, 116]]
    assert moved["shift_sw"] == [[116, 84]]
    assert moved["rot90_cw"] == [[100, 123]]  # (r, c) -> (c, H - 1 - r)


def test_non_square_skips_rot90() -> None:
    ts, notes = resolve_transforms(PAPER_TRANSFORMS, 32, 48)
    assert [t.name for t in ts] == [n for n in PAPER_TRANSFORMS if not n.startswith("rot90")]
    assert len(notes) == 2 and "not square" in notes[0]
    with pytest.raises(ValueError):
        get_transform("rot90_cw", 32, 48)
    with pytest.raises(ValueError):
        get_transform("shear", 32, 32)
    y, valid = get_transform("shift_se", 32, 48)(torch.rand(2, 32, 48))
    assert y.shape == (2, 32, 48) and valid[0].sum().item() == (32 - 2) * (48 - 3)


def test_extra_affine_transforms() -> None:
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    r90, v90 = get_transform("rot_90", 20, 20)(x)
    ccw, _ = get_transform("rot90_ccw", 20, 20)(x)
    torch.testing.assert_close(r90, ccw, atol=1e-5, rtol=0)
    assert v90.all()
    same, v1 = get_transform("scale_1", 20, 20)(x)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    assert v1.all()
    _, v45 = get_transform("rot_45", 20, 20)(x)
    # The continuous overlap of a square and its 45-degree rotation is 2 (sqrt 2 - 1) = 0.83.
    assert not v45[0, 0, 0] and v45[0, 10, 10] and 0.7 < v45[0].float().mean() < 0.85
    _, vsmall = get_transform("scale_0.5", 20, 20)(x)
    assert not vsmall[0, 0, 0] and vsmall[0, 10, 10]
    # Non-square rotation by 180 degrees is exact, with no aspect distortion.
    xr = torch.rand(1, 12, 30)
    r180, v180 = get_transform("rot_180", 12, 30)(xr)
    torch.testing.assert_close(r180, xr.flip(-1).flip(-2), atol=1e-5, rtol=0)
    assert v180.all()


# ----------------------------------------------------------------------------------------------
# blur


def test_reflect_indices_match_numpy_symmetric() -> None:
    for n, r in ((5, 2), (5, 5), (3, 7), (1, 3)):
        ref = np.pad(np.arange(n), r, mode="symmetric") if r <= n else None
        got = reflect_indices(n, r).numpy()
        if ref is not None:
            np.testing.assert_array_equal(got, ref)
        assert got.min() >= 0 and got.max() < n


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 5.0, 10.0, (1.0, 3.0)])
def test_gaussian_blur_matches_scipy(sigma: float | tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 24, 31))  # radius 40 > size exercises repeated reflection
    ref = np.stack([[gaussian_filter(x[n, c], sigma) for c in range(3)] for n in range(2)])
    got64 = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got64, ref, atol=1e-12)
    got32 = gaussian_blur(torch.from_numpy(x).float(), sigma).numpy()
    np.testing.assert_allclose(got32, ref, atol=1e-5)


def test_gaussian_blur_zero_sigma_is_identity() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    with pytest.raises(ValueError):
        gaussian_blur(x.to(torch.uint8), 1.0)


def _salient_maps(n: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.randint(0, min(h, w), (n, 2), generator=g)
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    maps = torch.exp(-d2 / (2 * 6.0**2))
    return torch.round(maps / maps.amax((1, 2), keepdim=True) * 255).to(torch.uint8)


# The reference: the authors' blur_image (tests/helpers/authors_code.py).
@pytest.mark.parametrize("mode", ["background", "object"])
def test_paper_blur_is_the_authors_blur_image_bit_for_bit(mode: str) -> None:
    maps8 = _salient_maps(3, 32, 36)
    images8 = (torch.rand(3, 3, 32, 36, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    images8[2, :, :10] = 77  # a flat region: where a float sum lands on an integer and truncation decides
    levels = paper_blur_levels(maps8, mode)
    out = paper_blur(images8, levels)
    for n in range(3):
        cam = maps8[n].numpy()
        stacked = cam if mode == "background" else 255 - cam
        ref_levels = None
        for c in range(3):
            ref, ref_levels = authors_code.blur_image(images8[n, c].numpy(), stacked, 10, True)
            assert np.array_equal(out[n, c].numpy(), ref), (n, c)
        assert np.array_equal(levels[n].numpy() / 10, ref_levels)
    # Background mode keeps the most salient pixel; object mode blurs it the most of all its pixels (the
    # authors scale by the maximum without subtracting the minimum, so that is not always sigma 10).
    peak = np.unravel_index(maps8[0].numpy().argmax(), (32, 36))
    assert levels[0][peak].item() == (100 if mode == "background" else int(levels[0].min()))


def test_paper_blur_levels_and_sigmas() -> None:
    images8 = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    assert torch.equal(paper_blur(images8, torch.full((2, 16, 16), 100)), images8)
    full = paper_blur(images8, torch.zeros(2, 16, 16, dtype=torch.long))
    assert np.array_equal(full.numpy(), gaussian_filter(images8.numpy(), 10.0, axes=(2, 3)))
    assert [level_sigma(q) for q in (0, 50, 100)] == [10.0, authors_code.get_curve(10, 5.0), 0.0]
    # A map without salience has no levels (the authors' code would divide by 0): level 0, and callers
    # exclude the image.
    assert paper_blur_levels(torch.zeros(1, 8, 8, dtype=torch.uint8), "background").eq(0).all()


def test_8bit_maps_truncate_like_to_pil_image_and_upscale_like_pil() -> None:
    from PIL import Image
    from torchvision.transforms.functional import to_pil_image

    maps = torch.rand(4, 7, 7, generator=torch.Generator().manual_seed(6))
    maps[3] = 0.0
    ours = to_uint8_truncated(maps)
    for i in range(3):
        m = maps[i].clone()
        m -= m.min()
        m /= m.max()  # TorchCAM's _normalize, in float32
        assert np.array_equal(ours[i].numpy(), np.asarray(to_pil_image(m).convert("L")))
    assert ours[3].eq(0).all()
    up = upscale_bicubic(ours, (32, 40))
    ref = np.asarray(Image.fromarray(ours[1].numpy()).resize((40, 32), resample=Image.BICUBIC))
    assert np.array_equal(up[1].numpy(), ref)


def test_noise_round_trip_is_skimage_then_astype_uint8() -> None:
    from skimage.util import img_as_float

    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    base = skimage_float(v)
    assert np.array_equal(base.numpy(), img_as_float(v.numpy()))
    back = quantise_like_skimage(base)
    assert np.array_equal(back.numpy(), (img_as_float(v.numpy()) * 255).astype(np.uint8))
    assert int((back != v).sum()) == 24  # the authors' round trip lowers 24 of 256 values by one


