"""Bootstrap confidence intervals and summaries of per-image columns.

Everything here is vectorised numpy and fully determined by its inputs and ``seed``: resamples are
drawn from ``np.random.default_rng(seed)`` in chunks whose size depends only on the number of
values, and all reductions are numpy's (no BLAS, whose summation order may depend on the machine's
threads). NaN values (empty maps, images without a label...) are dropped *before* resampling, so
the interval depends only on the finite values in their canonical order, never on where the NaNs
sat. Results are plain Python floats (NaN -> None) so that they go straight into a JSON report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
# Elements (resamples x values) per chunk of resample indices: ~32 MB of int64.
_CHUNK_ELEMS = 1 << 22


def as_float(x: Any) -> float | None:
    """A JSON-ready float: None for NaN/inf/None."""
    if x is None:
        return None
    f = float(x)
    return f if np.isfinite(f) else None


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def resample_indices(
    n: int, seed: int | np.random.SeedSequence, n_resamples: int = DEFAULT_RESAMPLES
) -> Iterator[np.ndarray]:
    """Bootstrap index matrices [c, n] (c resamples each) that together give ``n_resamples`` rows.

    The chunking depends only on ``n``, so the stream is a pure function of (n, seed, n_resamples).
    """
    rng = np.random.default_rng(seed)
    step = max(1, min(n_resamples, _CHUNK_ELEMS // max(n, 1)))
    done = 0
    while done < n_resamples:
        c = min(step, n_resamples - done)
        yield rng.integers(0, n, size=(c, n))
        done += c


def _percentile_ci(stats: np.ndarray, level: float) -> tuple[float, float] | None:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_ci(
    values: np.ndarray, seed: int, n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of the finite ``values``; None with fewer than 2."""
    _check_level(level)
    v = _finite(values)
    if v.size < 2:
        return None
    means = np.concatenate([v[idx].mean(axis=1) for idx in resample_indices(v.size, seed, n_resamples)])
    return _percentile_ci(means, level)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    seed: int,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of a statistic of n items (e.g. images).

    ``statistic(weights)`` gets float64 resample counts [c, n] (how often each item was drawn in each
    resample; all ones is the original sample) and returns [c] values; NaN values (e.g. an AUROC of
    a resample without positives) are left out of the percentiles. None when n < 2.
    """
    _check_level(level)
    if n < 2:
        return None
    out = []
    for idx in resample_indices(n, seed, n_resamples):
        c = idx.shape[0]
        counts = np.bincount((idx + n * np.arange(c)[:, None]).ravel(), minlength=c * n)
        out.append(np.asarray(statistic(counts.reshape(c, n).astype(np.float64)), dtype=np.float64))
    return _percentile_ci(np.concatenate(out), level)


def summarize(values: np.ndarray, seed: int, n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """Mean with bootstrap CI, n (finite values), n_empty (NaN values), median and sample std."""
    v = np.asarray(values, dtype=np.float64).ravel()
    f = v[np.isfinite(v)]
    return {
        "value": as_float(f.mean()) if f.size else None,
        "ci": bootstrap_ci(f, seed, n_resamples),
        "n": int(f.size),
        "n_empty": int(np.isnan(v).sum()),
        "median": as_float(np.median(f)) if f.size else None,
        "std": as_float(f.std(ddof=1)) if f.size >= 2 else None,
    }


def row_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (no warning) where a row has no finite value."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    cnt = ok.sum(axis=-1)
    total = np.where(ok, v, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)


def summarize_runs(values: np.ndarray, seed: int, n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """Candidate-level summary of per-run values [N, K].

    The candidate's value per image is the mean over its runs (NaN runs ignored); the summary is
    ``summarize`` of that column, plus ``per_run``: one ``summarize`` per run (same seed, so runs
    are resampled alike when they have the same finite images).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected values [N, K], got shape {v.shape}")
    out = summarize(row_nanmean(v), seed, n_resamples)
    out["per_run"] = [{"run": k, **summarize(v[:, k], seed, n_resamples)} for k in range(v.shape[1])]
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int, n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """Mean of ``a - b`` over images where both are finite, with a bootstrap CI over those images."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    return {
        "mean_diff": as_float(d.mean()) if d.size else None,
        "ci": bootstrap_ci(d, seed, n_resamples),
        "n": int(d.size),
    }


def two_sample_difference(
    a: np.ndarray, b: np.ndarray, seed: int, n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL
) -> dict[str, Any]:
    """mean(a) - mean(b) for independent samples, CI from resampling each sample on its own.

    The two samples are resampled from independent streams spawned from ``seed``.
    """
    _check_level(level)
    fa, fb = _finite(a), _finite(b)
    out: dict[str, Any] = {"mean_diff": None, "ci": None, "n_a": int(fa.size), "n_b": int(fb.size)}
    if fa.size == 0 or fb.size == 0:
        return out
    out["mean_diff"] = as_float(fa.mean() - fb.mean())
    if fa.size < 2 or fb.size < 2:
        return out
    # Independent streams for the two samples, each chunked like ``bootstrap_ci``.
    sa, sb = np.random.SeedSequence(seed).spawn(2)
    ma = np.concatenate([fa[i].mean(axis=1) for i in resample_indices(fa.size, sa, n_resamples)])
    mb = np.concatenate([fb[i].mean(axis=1) for i in resample_indices(fb.size, sb, n_resamples)])
    out["ci"] = _percentile_ci(ma - mb, level)
    return out


def trapezoid_auc(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid area under y [..., L] over x [L], divided by the x range (so a flat curve at c has
    area c). NaN in y propagates."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or y.shape[-1] != x.size:
        raise ValueError(f"need x [L>=2] and y [..., L], got x {x.shape} and y {y.shape}")
    span = x[-1] - x[0]
    if span == 0:
        raise ValueError("x must not be constant")
    return np.trapezoid(y, x, axis=-1) / span


def histogram(values: np.ndarray, bins: int = 20, range: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Histogram of the finite values: ``{"edges": [bins + 1], "counts": [bins]}``.

    Values are clipped into ``range`` first, so that e.g. an entropy of 1 + 1e-16 lands in the last
    bin instead of vanishing.
    """
    lo, hi = range
    v = np.clip(_finite(values), lo, hi)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def auroc_weighted(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rank-based AUROC (ties count 1/2) of each row of item weights [c, n]: [c].

    Equals the Mann-Whitney AUROC of the sample in which item i appears ``weights[r, i]`` times, so
    all-ones weights give the plain AUROC and bootstrap counts give the resampled ones. NaN for a
    row without positives or negatives.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # tie groups
    ws = w[:, order]
    p = np.add.reduceat(ws * pos[order], starts, axis=1)  # positive weight per tie group
    q = np.add.reduceat(ws * ~pos[order], starts, axis=1)  # negative weight per tie group
    below = np.cumsum(q, axis=1) - q  # negative weight strictly below each group
    num = (p * (below + 0.5 * q)).sum(axis=1)
    den = p.sum(axis=1) * q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)
