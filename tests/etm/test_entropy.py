"""Salience entropy: analytic oracles, skimage agreement and the measure end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.measure import shannon_entropy

from etm.measures.base import BatchContext
from etm.measures.entropy import EntropyMeasure, histogram_entropy, spatial_entropy
from etm.ops.maps import to_uint8
from etm.salience.base import SalienceResult


def _result(native: torch.Tensor, logits: torch.Tensor, input_size: bool = False) -> SalienceResult:
    probs = torch.softmax(logits, dim=1)
    pred = logits.argmax(dim=1)
    up = native if input_size else F.interpolate(native[:, None], size=(28, 28), mode="bilinear")[:, 0]
    return SalienceResult(native=native, upsampled=up, logits=logits, targets=pred,
                          scores=probs.gather(1, pred[:, None])[:, 0], predicted=pred,
                          native_is_input_size=input_size)


def _ctx(results: list[SalienceResult], labels: list[int]) -> BatchContext:
    n = results[0].native.shape[0]
    return BatchContext(
        keys=[f"img{i}.png" for i in range(n)], images=torch.zeros(n, 3, 28, 28),
        labels=torch.tensor(labels), masks=None, has_mask=torch.zeros(n, dtype=torch.bool),
        image_seeds=torch.arange(n), clean=results,
        salience_fn=lambda r, x: results[r], logits_fn=lambda r, x: results[r].logits,
        probabilities_fn=lambda r, lg: torch.softmax(lg, dim=1),
    )


def test_spatial_entropy_oracles() -> None:
    maps = torch.zeros(4, 7, 7)
    maps[0, 3, 3] = 5.0  # one-hot -> 0
    maps[1] = 2.0  # uniform -> 1
    maps[2, :, :] = 0.0  # empty -> NaN
    maps[3, 0, :2] = 1.0  # two equal cells -> 1 bit / log2(49)
    h = spatial_entropy(maps).numpy()
    assert h[0] == 0.0 and not np.signbit(h[0])
    assert h[1] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(h[2])
    assert h[3] == pytest.approx(1.0 / np.log2(49), abs=1e-12)


def test_spatial_entropy_matches_the_formula_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    s = np.maximum(rng.normal(size=(10, 14, 9)), 0)
    p = s.reshape(10, -1) / s.reshape(10, -1).sum(axis=1, keepdims=True)
    want = -np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0), axis=1) / np.log2(14 * 9)
    np.testing.assert_allclose(spatial_entropy(torch.from_numpy(s).float()).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (224, 224)])
def test_histogram_entropy_matches_skimage(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    maps = rng.gamma(1.0, size=(6, *shape)).astype(np.float32)
    maps8 = to_uint8(torch.from_numpy(maps))
    got = histogram_entropy(maps8).numpy()
    want = [shannon_entropy(m) / np.log2(shape[0] * shape[1]) for m in maps8.numpy()]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_uniform_map_scores_zero_on_histogram_variant() -> None:
    """The paper variant's known flaw: a uniform map looks perfectly focused (0)."""
    uniform = torch.full((1, 7, 7), 3.0)
    assert histogram_entropy(to_uint8(uniform)).item() == 0.0
    assert spatial_entropy(uniform).item() == pytest.approx(1.0)


def test_histogram_entropy_rejects_float_maps() -> None:
    with pytest.raises(ValueError):
        histogram_entropy(torch.zeros(1, 7, 7))


def test_entropy_measure_end_to_end() -> None:
    rng = np.random.default_rng(2)
    n = 12
    run0 = torch.from_numpy(rng.random((n, 7, 7))).float()
    run1 = run0.clone()
    run0[0] = 0.0  # empty map in run 0 only
    run1[1] = 0.0
    run1[1, 2, 2] = 1.0  # one-hot in run 1
    logits0 = torch.from_numpy(rng.normal(size=(n, 2))).float()
    logits1 = -logits0
    labels = [0, 1] * 5 + [-1, -1]
    ctx = _ctx([_result(run0, logits0), _result(run1, logits1)], labels)
    m = EntropyMeasure({"bootstrap_resamples": 200})
    cols = m.per_image(ctx)
    assert cols["spatial"].shape == (n, 2) and cols["histogram"].shape == (n, 2)
    assert np.isnan(cols["spatial"][0, 0]) and np.isnan(cols["histogram"][0, 0])
    assert cols["spatial"][1, 1] == 0.0
    np.testing.assert_array_equal(cols["label"], labels)

    results = {r.name: r for r in m.summarize(cols, None, rng_seed=0)}
    assert set(results) == {"entropy.spatial", "entropy.histogram"}
    sp = results["entropy.spatial"]
    per_image = np.nanmean(cols["spatial"], axis=1)
    assert sp.value == pytest.approx(per_image.mean())
    assert sp.n == n and sp.n_empty == 1 and sp.direction == "lower" and sp.variant == "default"
    assert sp.ci[0] <= sp.value <= sp.ci[1]
    assert len(sp.per_run) == 2 and sp.per_run[0]["n"] == n - 1
    assert sum(sp.details["histogram"]["counts"]) == n
    assert set(sp.details["by_true_class"]) == {"0", "1", "unknown"}
    assert sp.details["by_true_class"]["unknown"]["n"] == 2
    by_pred = sp.details["by_predicted_class"]
    # the two runs always predict opposite classes, so each image counts in both classes
    assert by_pred["0"]["n"] + by_pred["1"]["n"] == 2 * n - 1
    assert "known_flaw" in results["entropy.histogram"].details
    assert results["entropy.histogram"].variant == "paper"
    assert "note" not in sp.details
    # the report is JSON-ready and deterministic
    again = {r.name: r.as_dict() for r in m.summarize(cols, None, rng_seed=0)}
    assert again["entropy.spatial"] == sp.as_dict()


def test_entropy_measure_says_when_input_size_maps_are_used() -> None:
    native = torch.rand(3, 28, 28)
    ctx = _ctx([_result(native, torch.randn(3, 2), input_size=True)], [0, 1, 0])
    m = EntropyMeasure({"bootstrap_resamples": 100})
    res = m.summarize(m.per_image(ctx), None, rng_seed=0)
    assert all("input-size map used" in r.details["note"] for r in res)


def test_sharded_columns_summarise_like_one_batch() -> None:
    rng = np.random.default_rng(3)
    native = torch.from_numpy(rng.random((10, 7, 7))).float()
    logits = torch.from_numpy(rng.normal(size=(10, 2))).float()
    labels = [0, 1] * 5
    m = EntropyMeasure({"bootstrap_resamples": 100})
    whole = m.per_image(_ctx([_result(native, logits)], labels))
    shards = (slice(0, 3), slice(3, 10))
    parts = [m.per_image(_ctx([_result(native[s], logits[s])], labels[s])) for s in shards]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in whole}
    for k in whole:
        np.testing.assert_array_equal(merged[k], whole[k])
    merged_report = [r.as_dict() for r in m.summarize(merged, None, 5)]
    assert merged_report == [r.as_dict() for r in m.summarize(whole, None, 5)]
