"""(a) Salience entropy: how focused is the model?

Two variants from the same clean native maps:

- ``entropy.spatial`` (default): the map as a distribution over its h*w cells, ``p = S / sum S``,
  ``H = -sum p log2 p / log2(h*w)`` in [0, 1]; 0 = all salience in one cell, 1 = uniform.
- ``entropy.histogram`` (paper): Shannon entropy (base 2) of the value histogram of the 8-bit map,
  as ``skimage.measure.shannon_entropy``, divided by ``log2(h*w)`` (or by the constant
  ``histogram_normaliser``: the authors' notebook divides by 5.614, ``log2`` of a 7x7 map's 49 cells
  rounded). The 8-bit map is the authors' (``etm.ops.paper.to_uint8_truncated``: truncated).
  Known flaw: a perfectly uniform map has a single 8-bit value (its min-max map is all zeros) and
  so scores 0, the "most focused" value, although its salience is spread everywhere. It measures
  value diversity, not focus.

Lower = more focused for both. Empty maps (no positive salience) get NaN in both variants and are
counted, never divided by. The transcendental maths runs in numpy float64 on the CPU so a map's
entropy has the same bits whatever batch or shard it was computed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.ops.maps import is_empty
from etm.ops.paper import to_uint8_truncated
from etm.stats import DEFAULT_RESAMPLES, histogram, row_nanmean, summarize, summarize_runs

INPUT_SIZE_NOTE = "native map unavailable for this method; input-size map used"
HISTOGRAM_FLAW = (
    "entropy.histogram measures the diversity of 8-bit values, not spatial focus: a "
    "perfectly uniform map scores 0 (the 'most focused' value)"
)


_ENTROPY_CHUNK = 1024  # maps per histogram block


def _plogp_sum(p: np.ndarray) -> np.ndarray:
    """-sum p log2 p over the last axis, with 0 log 0 = 0."""
    pos = p > 0
    terms = np.where(pos, p * np.log2(np.where(pos, p, 1.0)), 0.0)
    return 0.0 - terms.sum(axis=-1)  # 0.0 - x keeps a one-hot map at +0.0, not -0.0


def spatial_entropy(native: torch.Tensor) -> torch.Tensor:
    """Normalised spatial entropy of each map [N, h, w]: float64 [N] on the CPU.

    Negative values (maps should be ReLU'd) count as 0. NaN for empty maps and for 1x1 maps (whose
    normalisation ``log2(1)`` is 0).
    """
    if native.ndim != 3:
        raise ValueError(f"expected maps [N, h, w], got shape {tuple(native.shape)}")
    n, h, w = native.shape
    s = np.maximum(native.detach().to("cpu", torch.float64).numpy().reshape(n, h * w), 0.0)
    total = s.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / np.where(total > 0, total, 1.0)[:, None]
        ent = _plogp_sum(p) / np.log2(h * w)
    ent[total <= 0] = np.nan
    return torch.from_numpy(ent)


def histogram_entropy(maps8: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """``skimage.measure.shannon_entropy(map8) / log2(h*w)`` of each uint8 map [N, h, w]: float64 [N].
    With ``normaliser``, divided by that constant instead of ``log2(h*w)``.

    Batched with one ``bincount`` over (map, value) pairs. An all-zero map scores 0; the measure
    marks empty maps NaN itself. 1x1 maps give NaN.
    """
    if maps8.ndim != 3 or maps8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 maps [N, h, w], got {maps8.dtype} {tuple(maps8.shape)}")
    n, h, w = maps8.shape
    hw = h * w
    values = maps8.detach().cpu().numpy().reshape(n, hw)
    # p log2 p of every possible count (0..h*w) once, then looked up per bin: the same terms as
    # evaluating all 256 bins of every map, summed in the same rows, so the same bits. Chunks of
    # maps keep the [maps, 256] tables in the CPU caches (3x faster on 100,000 maps).
    p = np.arange(hw + 1) / float(hw)
    with np.errstate(invalid="ignore", divide="ignore"):
        plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
        norm = np.log2(hw) if normaliser is None else float(normaliser)
    ent = np.empty(n, dtype=np.float64)
    offsets = 256 * np.arange(_ENTROPY_CHUNK)[:, None]
    for start in range(0, n, _ENTROPY_CHUNK):
        v = values[start : start + _ENTROPY_CHUNK].astype(np.int64)
        m = v.shape[0]
        counts = np.bincount((v + offsets[:m]).ravel(), minlength=256 * m).reshape(m, 256)
        with np.errstate(invalid="ignore", divide="ignore"):
            ent[start : start + m] = (0.0 - plogp[counts].sum(axis=-1)) / norm
    return torch.from_numpy(ent)


def _class_key(c: int) -> str:
    return "unknown" if c < 0 else str(c)


def split_by_true_class(per_image: np.ndarray, labels: np.ndarray, seed: int, n_resamples: int) -> dict:
    """``summarize`` of a per-image column [N] for each true class (``-1`` -> "unknown")."""
    return {_class_key(int(c)): summarize(per_image[labels == c], seed, n_resamples) for c in np.unique(labels)}


def split_by_predicted_class(values: np.ndarray, predicted: np.ndarray, seed: int, n_resamples: int) -> dict:
    """For each predicted class c: per image, the mean over the runs that predicted c ([N, K] values
    and predictions), summarised over the images where at least one run did."""
    out = {}
    for c in np.unique(predicted):
        col = row_nanmean(np.where(predicted == c, values, np.nan))
        hit = (predicted == c).any(axis=1)
        out[_class_key(int(c))] = summarize(col[hit], seed, n_resamples)
    return out


class EntropyMeasure(Measure):
    """Spatial (default) and histogram (paper) entropy of the clean native maps.

    Params: ``bootstrap_resamples`` (the job's resample count; the engine passes it), ``bins``
    (histogram bins over [0, 1], 20), ``histogram_normaliser`` (None = ``log2(h*w)``; the paper
    profile: 5.614).

    Columns: ``spatial``, ``histogram`` [N, K] float64; ``empty``, ``predicted`` [N, K];
    ``label`` [N] (-1 unknown); ``native_is_input_size`` [N] bool; ``cells`` [N] (h*w).
    """

    name = "entropy"
    title = "Salience entropy"
    about = "How spread out the salience map is. Lower: the model looks at fewer places."
    variants = {"entropy.spatial": ("default", "lower"), "entropy.histogram": ("paper", "lower")}
    notes = {
        "entropy.spatial": "spatial entropy of the native map",
        "entropy.histogram": "entropy of the 8-bit value histogram (paper)",
    }

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "bins": 20, "histogram_normaliser": None}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        norm = self.params["histogram_normaliser"]
        if norm is not None and (isinstance(norm, bool) or not isinstance(norm, int | float) or not norm > 0):
            raise BadInput(f"histogram_normaliser must be a number > 0 or null (log2 of the map's cells), got {norm!r}")

    def per_image(self, ctx: BatchContext) -> Columns:
        n = len(ctx.keys)
        spatial, hist, empty, pred = [], [], [], []
        for res in ctx.clean:  # loop over runs; each step is batched over the images
            emp = is_empty(res.native).cpu().numpy()
            he = histogram_entropy(to_uint8_truncated(res.native), self.params["histogram_normaliser"]).numpy()
            he[emp] = np.nan
            spatial.append(spatial_entropy(res.native).numpy())
            hist.append(he)
            empty.append(emp)
            pred.append(res.predicted.detach().cpu().numpy().astype(np.int64))
        h, w = ctx.clean[0].native.shape[1:]
        return {
            "spatial": np.stack(spatial, axis=1),
            "histogram": np.stack(hist, axis=1),
            "empty": np.stack(empty, axis=1),
            "predicted": np.stack(pred, axis=1),
            "label": ctx.labels.detach().cpu().numpy().astype(np.int64),
            "native_is_input_size": np.full(n, any(r.native_is_input_size for r in ctx.clean)),
            "cells": np.full(n, h * w, dtype=np.int64),
        }

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        bins = int(self.params["bins"])
        input_size = bool(np.any(cols["native_is_input_size"]))
        n_empty = int(np.sum(cols["empty"]))
        out = []
        for variant, key in (("entropy.spatial", "spatial"), ("entropy.histogram", "histogram")):
            values = cols[key]
            s = summarize_runs(values, rng_seed, reps)
            per_image = row_nanmean(values)
            details: dict[str, Any] = {
                "median": s["median"],
                "std": s["std"],
                "histogram": histogram(per_image, bins=bins, range=(0.0, 1.0)),
                "by_true_class": split_by_true_class(per_image, cols["label"], rng_seed, reps),
                "by_predicted_class": split_by_predicted_class(values, cols["predicted"], rng_seed, reps),
                "images_without_value": s["n_empty"],
                "map_cells": sorted({int(c) for c in np.unique(cols["cells"])}),
            }
            if key == "histogram":
                details["known_flaw"] = HISTOGRAM_FLAW
            if input_size:
                details["note"] = INPUT_SIZE_NOTE
            norm = self.params["histogram_normaliser"] if key == "histogram" else None
            params = {
                "map": "input-size" if input_size else "native",
                "normalisation": "log2(h*w)" if norm is None else float(norm),
                "bootstrap_resamples": reps,
            }
            if key == "histogram":
                params["map_8bit"] = "truncated (the authors' to_pil_image)"
            out.append(self.result(variant, s, params, details, per_image, n_empty=n_empty))
        return out
