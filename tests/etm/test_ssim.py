"""Batched SSIM / Pearson against skimage and numpy, and the map conversions they rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from etm.errors import BadInput
from etm.ops.maps import is_empty, minmax01, per_map_sum, to_uint8
from etm.ops.ssim import pearson, ssim, window_size


def _sk(a: np.ndarray, b: np.ndarray, **kw) -> np.ndarray:
    return np.array([structural_similarity(x, y, **kw) for x, y in zip(a, b, strict=True)])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _noisy_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.3, shape), 0, 1)
    return a, b


@pytest.mark.parametrize("size", [7, 13, 64])
def test_float64_maps_match_skimage(rng: np.random.Generator, size: int) -> None:
    a, b = _noisy_pair(rng, (6, size, size))
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), 1.0).numpy()
    np.testing.assert_allclose(got, _sk(a, b, data_range=1.0), rtol=0, atol=1e-10)


def test_float32_maps_match_skimage_within_contract(rng: np.random.Generator) -> None:
    a, b = (x.astype(np.float32) for x in _noisy_pair(rng, (4, 64, 48)))
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), 1.0).numpy()
    # skimage itself computes float32 input in float32; we compute in float64.
    np.testing.assert_allclose(got, _sk(a, b, data_range=1.0), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, _sk(a.astype(np.float64), b.astype(np.float64), data_range=1.0),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(7, 7), (64, 64), (9, 20)])
def test_uint8_maps_match_skimage_defaults(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    a = rng.integers(0, 256, (8, *shape), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), 255.0).numpy()
    np.testing.assert_allclose(got, _sk(a, b), rtol=0, atol=1e-10)  # skimage's uint8 default: 255


def test_identical_maps_give_exactly_one(rng: np.random.Generator) -> None:
    a = torch.from_numpy(rng.integers(0, 256, (3, 7, 7), dtype=np.uint8))
    assert torch.equal(ssim(a, a, 255.0), torch.ones(3, dtype=torch.float64))


def test_masked_rectangle_equals_cropped(rng: np.random.Generator) -> None:
    a, b = _noisy_pair(rng, (5, 64, 64))
    mask = np.zeros(a.shape, dtype=bool)
    crops = [(slice(0, 48), slice(16, 64)), (slice(16, 64), slice(0, 48)), (slice(5, 40), slice(10, 60)),
             (slice(0, 64), slice(0, 57)), (slice(3, 10), slice(3, 64))]
    for i, (r, c) in enumerate(crops):
        mask[i, r, c] = True
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), 1.0, mask=torch.from_numpy(mask)).numpy()
    want = [structural_similarity(a[i, r, c], b[i, r, c], data_range=1.0) for i, (r, c) in enumerate(crops)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_mask_without_a_full_window_gives_nan(rng: np.random.Generator) -> None:
    a, b = _noisy_pair(rng, (1, 16, 16))
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, :5, :] = True
    assert torch.isnan(ssim(torch.from_numpy(a), torch.from_numpy(b), 1.0, mask=mask)).all()


def test_small_maps_use_largest_odd_window(rng: np.random.Generator) -> None:
    assert window_size(5, 6) == 5
    assert window_size(4, 9) == 3
    assert window_size(224, 224) == 7
    a = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), 255.0).numpy()
    np.testing.assert_allclose(got, _sk(a, b, win_size=5), rtol=0, atol=1e-10)
    with pytest.raises(BadInput):
        ssim(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 1.0)


def test_ssim_is_batch_independent(rng: np.random.Generator) -> None:
    """A map's value has the same bits alone or in a batch (sharding must not change numbers)."""
    a, b = (torch.from_numpy(x) for x in _noisy_pair(rng, (9, 32, 32)))
    whole = ssim(a, b, 1.0)
    single = torch.cat([ssim(a[i:i + 1], b[i:i + 1], 1.0) for i in range(9)])
    assert torch.equal(whole, single)


def test_pearson_matches_numpy_and_handles_constants(rng: np.random.Generator) -> None:
    a, b = _noisy_pair(rng, (4, 10, 12))
    b[3] = 0.5
    got = pearson(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(3)]
    np.testing.assert_allclose(got[:3], want, rtol=0, atol=1e-12)
    assert np.isnan(got[3])
    mask = rng.random(a.shape) > 0.4
    got = pearson(torch.from_numpy(a), torch.from_numpy(a**2), mask=torch.from_numpy(mask)).numpy()
    want = [np.corrcoef(a[i][mask[i]], a[i][mask[i]] ** 2)[0, 1] for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_to_uint8_min_max_rule() -> None:
    m = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = to_uint8(m)
    assert out.dtype == torch.uint8
    # 1/4 * 255 = 63.75 -> 64; 2/4 * 255 = 127.5 -> 128 (half to even, as np.round)
    assert out[0].tolist() == [[0, 64], [128, 255]]
    assert out[1].tolist() == [[0, 0], [0, 0]]  # an all-equal map is all zeros
    ref = np.round((m[0].numpy() - 0) / 4 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[0].numpy(), ref)


def test_minmax01_with_mask_and_empty_maps() -> None:
    m = torch.tensor([[[5.0, 1.0], [2.0, 3.0]]])
    mask = torch.tensor([[[False, True], [True, True]]])
    out = minmax01(m, mask)
    assert out.tolist() == [[[0.0, 0.0], [0.5, 1.0]]]
    maps = torch.zeros(3, 4, 4)
    maps[1, 2, 2] = 2.0**-100
    maps[2] = -1.0
    assert is_empty(maps).tolist() == [True, False, True]
    assert per_map_sum(maps).tolist() == [0.0, 2.0**-100, -16.0]
