"""Per-row similarity and complexity of flattened maps, as Quantus 0.6 computes them (``quantus.functions``).

Each function takes two ``[N, F]`` float arrays (maps flattened, one row per image) and returns ``[N]``, NaN
where the value is undefined (a constant row: an empty map). Batched with NumPy/SciPy over the rows:

- ``spearman``: Spearman's rank correlation (``scipy.stats.rankdata``, average ranks for ties, then Pearson's
  r of the ranks: what ``scipy.stats.spearmanr`` computes and ``quantus.similarity_func.correlation_spearman``
  calls).
- ``pearson``: Pearson's r.
- ``ssim_flat``: ``quantus.similarity_func.ssim``: ``skimage.metrics.structural_similarity`` of the
  *flattened* maps (a 1-D signal, window 7, sample covariance, ``data_range`` = max - min of both rows
  together), with ``scipy.ndimage.uniform_filter1d`` (reflect mode) as skimage's ``uniform_filter``.
- ``discrete_entropy``: ``quantus.complexity_func.discrete_entropy``: ``scipy.stats.entropy`` (natural log) of
  ``np.histogram(row, bins=n_bins)``.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.stats


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = _rows(a), _rows(b)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return pearson(scipy.stats.rankdata(_rows(a), axis=1), scipy.stats.rankdata(_rows(b), axis=1))


def ssim_flat(a: np.ndarray, b: np.ndarray, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    x, y = _rows(a), _rows(b)
    data_range = np.maximum(x.max(axis=1), y.max(axis=1)) - np.minimum(x.min(axis=1), y.min(axis=1))

    def filt(v: np.ndarray) -> np.ndarray:
        return scipy.ndimage.uniform_filter1d(v, win_size, axis=1, mode="reflect")

    cov_norm = win_size / (win_size - 1)
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1 = ((k1 * data_range) ** 2)[:, None]
    c2 = ((k2 * data_range) ** 2)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    out = s[:, pad : s.shape[1] - pad].mean(axis=1)
    return np.where(data_range > 0, out, np.nan)


SIMILARITIES = {"spearman": spearman, "pearson": pearson, "ssim": ssim_flat}


def discrete_entropy(a: np.ndarray, n_bins: int = 100) -> np.ndarray:
    out = np.empty(len(a))
    rows = np.asarray(a).reshape(len(a), -1)  # in the maps' own dtype, as Quantus histograms them
    for i, row in enumerate(rows):  # np.histogram's bin edges per row; 100 bins cost nothing
        hist, _ = np.histogram(row, bins=n_bins)
        out[i] = scipy.stats.entropy(hist)
    return out
