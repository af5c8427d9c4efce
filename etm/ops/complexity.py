"""Complexity and localisation of maps against a binary region, batched in numpy float64 on the CPU.

Each function takes maps [N, ...] (any trailing shape, flattened per map) and returns float64 [N], so a map's
value never depends on the batch it was computed in. The definitions are Quantus 0.6.0's (``Sparseness``,
``RelevanceRankAccuracy``, ``PointingGame``, ``TopKIntersection``); where Quantus leaves an order to an unstable
``np.argsort(-a)``, ties here go to the lower pixel index (as ``degradation.deletion``), so results are
deterministic and equal Quantus's whenever the map has no ties at the cut.
"""

from __future__ import annotations

import numpy as np
import torch

# Quantus adds this to every normalised value before the Gini index, so an all-equal map scores 0, not 0/0.
GINI_EPS = 1e-7


def _flat64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    return a.reshape(a.shape[0], -1)


def gini_index(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Gini index of ``|map| / max|map| + 1e-7`` per map (Chalasani et al. 2020, as Quantus ``Sparseness``):
    0 = salience spread evenly, towards 1 = in one pixel. NaN for an all-zero map (Quantus scores it 0)."""
    a = np.abs(_flat64(maps))
    top = a.max(axis=1, initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.where(top > 0, top, 1.0)[:, None] + GINI_EPS
    a.sort(axis=1)
    n = a.shape[1]
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    gini = (weights * a).sum(axis=1) / (n * a.sum(axis=1))
    gini[top <= 0] = np.nan
    return gini


def descending_order(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pixel indices of each map from most to least salient, ties by lower index: int64 [N, P]."""
    a = _flat64(maps)
    return np.argsort(-a, axis=1, kind="stable")


def rank_accuracy(maps: torch.Tensor | np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of the region's R pixels among the map's R most salient (Arras et al. 2022). NaN: empty region."""
    s = np.asarray(region, bool).reshape(region.shape[0], -1)
    order = descending_order(maps)
    r = s.sum(axis=1)
    hits = np.take_along_axis(s, order, axis=1)
    top = np.arange(s.shape[1])[None, :] < r[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (hits & top).sum(axis=1) / r
    return np.where(r > 0, out, np.nan)


def pointing_game(maps: torch.Tensor | np.ndarray, region: np.ndarray) -> np.ndarray:
    """1.0 if a pixel of maximal salience lies in the region (all tied maxima count, as Quantus), else 0.0
    (Zhang et al. 2018). NaN: empty region."""
    a = _flat64(maps)
    s = np.asarray(region, bool).reshape(region.shape[0], -1)
    at_max = a == a.max(axis=1, keepdims=True)
    hit = (at_max & s).any(axis=1).astype(np.float64)
    return np.where(s.any(axis=1), hit, np.nan)


def topk_intersection(maps: torch.Tensor | np.ndarray, region: np.ndarray, k: int) -> np.ndarray:
    """Share of the map's k most salient pixels that lie in the region (Quantus ``TopKIntersection``,
    ``concept_influence=False``). NaN: empty region."""
    s = np.asarray(region, bool).reshape(region.shape[0], -1)
    order = descending_order(maps)[:, :k]
    out = np.take_along_axis(s, order, axis=1).mean(axis=1)
    return np.where(s.any(axis=1), out, np.nan)
