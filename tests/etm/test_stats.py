"""Bootstrap utilities: determinism, NaN handling, and agreement with closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from etm.stats import (
    auroc_weighted,
    bootstrap_ci,
    bootstrap_statistic,
    histogram,
    paired_difference,
    resample_indices,
    row_nanmean,
    summarize,
    summarize_runs,
    trapezoid_auc,
    two_sample_difference,
)


def test_bootstrap_ci_is_deterministic_and_seed_dependent() -> None:
    v = np.random.default_rng(0).normal(size=200)
    assert bootstrap_ci(v, seed=7) == bootstrap_ci(v, seed=7)
    assert bootstrap_ci(v, seed=7) != bootstrap_ci(v, seed=8)


def test_bootstrap_ci_matches_normal_theory() -> None:
    v = np.random.default_rng(1).normal(3.0, 2.0, size=2000)
    lo, hi = bootstrap_ci(v, seed=0, n_resamples=2000)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert lo < v.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_nan_positions_do_not_change_the_interval() -> None:
    v = np.random.default_rng(2).random(50)
    a = np.insert(v, [0, 10, 10, 49], np.nan)
    b = np.concatenate([v, [np.nan] * 4])
    assert bootstrap_ci(a, 3) == bootstrap_ci(b, 3) == bootstrap_ci(v, 3)


def test_bootstrap_ci_needs_two_values() -> None:
    assert bootstrap_ci(np.array([1.0, np.nan]), 0) is None
    assert bootstrap_ci(np.array([]), 0) is None
    assert bootstrap_ci(np.array([2.0, 2.0, 2.0]), 0) == (2.0, 2.0)


def test_resample_chunks_cover_all_resamples() -> None:
    chunks = list(resample_indices(5_000_000, seed=0, n_resamples=3))
    assert sum(c.shape[0] for c in chunks) == 3 and len(chunks) == 3
    chunks = list(resample_indices(10, seed=0, n_resamples=1000))
    assert sum(c.shape[0] for c in chunks) == 1000


def test_bootstrap_statistic_agrees_with_bootstrap_ci_for_the_mean() -> None:
    v = np.random.default_rng(3).random(300)
    ci = bootstrap_ci(v, 11)
    ci2 = bootstrap_statistic(v.size, lambda w: (w * v).sum(axis=1) / w.sum(axis=1), 11)
    np.testing.assert_allclose(ci2, ci, rtol=0, atol=1e-12)  # same resamples, counts vs indices


def test_summarize_fields() -> None:
    s = summarize(np.array([1.0, 2.0, np.nan, 3.0, 10.0]), seed=0, n_resamples=200)
    assert s["value"] == 4.0 and s["n"] == 4 and s["n_empty"] == 1
    assert s["median"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 10], ddof=1))
    assert s["ci"][0] <= 4.0 <= s["ci"][1]
    empty = summarize(np.array([np.nan]), seed=0)
    assert empty["value"] is None and empty["ci"] is None and empty["n_empty"] == 1


def test_summarize_runs_uses_per_image_nanmean() -> None:
    v = np.array([[1.0, 3.0], [np.nan, 4.0], [np.nan, np.nan], [0.0, 0.0]])
    s = summarize_runs(v, seed=0, n_resamples=100)
    assert s["value"] == pytest.approx((2.0 + 4.0 + 0.0) / 3)
    assert s["n"] == 3 and s["n_empty"] == 1
    assert [r["value"] for r in s["per_run"]] == [0.5, pytest.approx(7 / 3)]
    assert np.isnan(row_nanmean(v)[2])


def test_paired_difference() -> None:
    a = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    b = a - 0.5
    b[0] = np.nan
    d = paired_difference(a, b, seed=0)
    assert d["n"] == 3 and d["mean_diff"] == 0.5 and d["ci"] == (0.5, 0.5)
    with pytest.raises(ValueError):
        paired_difference(a, b[:3], seed=0)


def test_two_sample_difference() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 600)
    d = two_sample_difference(a, b, seed=0)
    assert d["mean_diff"] == pytest.approx(a.mean() - b.mean())
    lo, hi = d["ci"]
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert two_sample_difference(a, b, seed=0) == d
    assert two_sample_difference(a[:1], b, seed=0)["ci"] is None


def test_trapezoid_auc_normalised_by_x_range() -> None:
    x = np.array([0.0, 0.1, 0.5, 1.0])
    assert trapezoid_auc(np.full((2, 4), 0.7), x) == pytest.approx([0.7, 0.7])
    assert trapezoid_auc(x * 2, x) == pytest.approx(1.0)
    assert trapezoid_auc(np.array([1.0, 1.0]), np.array([10.0, 20.0])) == pytest.approx(1.0)


def test_histogram_clips_into_range() -> None:
    h = histogram(np.array([0.0, 0.05, 0.5, 1.0, 1.0 + 1e-12, np.nan]), bins=20)
    assert len(h["edges"]) == 21 and sum(h["counts"]) == 5
    assert h["counts"][0] == 1 and h["counts"][1] == 1 and h["counts"][-1] == 2


def _auroc_bruteforce(s: np.ndarray, pos: np.ndarray) -> float:
    num = sum((sp > sn) + 0.5 * (sp == sn) for sp, sn in itertools.product(s[pos], s[~pos]))
    return num / (pos.sum() * (~pos).sum())


def test_auroc_with_ties_and_weights() -> None:
    rng = np.random.default_rng(5)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    pos = rng.random(40) > 0.5
    assert auroc_weighted(s, pos, np.ones((1, 40)))[0] == pytest.approx(_auroc_bruteforce(s, pos))
    w = rng.integers(0, 3, 40)
    rep = np.repeat(np.arange(40), w)
    got = auroc_weighted(s, pos, w[None].astype(float))[0]
    assert got == pytest.approx(_auroc_bruteforce(s[rep], pos[rep]))
    assert np.isnan(auroc_weighted(s, np.ones(40, bool), np.ones((1, 40)))[0])
