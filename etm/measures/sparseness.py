"""Sparseness of the maps (complexity): ``entropy.sparseness``, opt-in.

The Gini index of each clean map (Chalasani et al. 2020), as Quantus 0.6.0 ``Sparseness`` computes it with its
defaults (``abs=True, normalise=True``): ``a = |map| / max|map| + 1e-7``, sorted ascending, then
``sum((2i - n - 1) a_i) / (n sum a_i)`` over the n cells. 0 = salience spread evenly over the map, towards 1 =
salience in few cells. Higher = sparser (more concise) maps. It sits next to ``entropy.spatial`` (the other
focus measure) under the ``entropy.`` prefix, in its own family so that default jobs are unchanged.

Conventions that differ from Quantus (docs/MEASURES.md): Quantus divides by the maximum over the whole batch it is
given (``normalise_by_max`` over all axes), here each map is divided by its own maximum, so a map's value does not
depend on its batch or shard; an all-zero map is NaN here and counted (Quantus scores it 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.measures.entropy import INPUT_SIZE_NOTE
from etm.ops.complexity import GINI_EPS, gini_index
from etm.params import Param
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

SPARSENESS = "entropy.sparseness"


class SparsenessMeasure(Measure):
    """Gini index of the clean maps.

    Params: ``map`` (``native``, the default, or ``upsampled``: the input-size map Quantus is usually given),
    ``bootstrap_resamples``.

    Columns: ``gini`` [N, K] float64 (NaN for an all-zero map); ``native_is_input_size`` [N] bool.
    """

    name = "sparseness"
    title = "Sparseness (Gini index)"
    about = "How concentrated the salience is, as the Gini index of the map. Higher: fewer cells carry the salience."
    variants = {SPARSENESS: ("extra", "higher")}
    notes = {SPARSENESS: "Gini index of |map| (Quantus Sparseness)"}
    param_types = {"map": Param("native", str, choices=("native", "upsampled"))}
    opt_in = True

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "map": "native"}

    def per_image(self, ctx: BatchContext) -> Columns:
        key = self.params["map"]
        gini = np.stack([gini_index(getattr(res, key)) for res in ctx.clean], axis=1)
        return {
            "gini": gini,
            "native_is_input_size": np.full(len(ctx.keys), any(r.native_is_input_size for r in ctx.clean)),
        }

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        values = np.asarray(cols["gini"], dtype=np.float64)
        s = summarize_runs(values, rng_seed, reps)
        details: dict[str, Any] = {
            "what": "Gini index of |map| / max|map| + 1e-7 per map (Quantus 0.6.0 Sparseness, abs and normalise on)",
            "median": s["median"],
            "std": s["std"],
            "images_without_value": s["n_empty"],
        }
        if self.params["map"] == "native" and bool(np.any(cols["native_is_input_size"])):
            details["note"] = INPUT_SIZE_NOTE
        params = {
            "map": self.params["map"],
            "abs": True,
            "normalise": "each map by its own max |value|",
            "epsilon": GINI_EPS,
            "bootstrap_resamples": reps,
        }
        n_empty = int(np.isnan(values).sum())
        return [self.result(SPARSENESS, s, params, details, row_nanmean(values), n_empty=n_empty)]
