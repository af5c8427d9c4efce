"""(d) Stability of salience across a family of independently trained runs.

For every image and every pair of runs (i < j, in lexicographic order), the similarity of their
8-bit native maps (the authors' 8-bit maps, truncated: ``etm.ops.paper.to_uint8_truncated``):
SSIM with data range 255 (``stability.ssim``, paper) or Pearson r of the same 8-bit maps
(``stability.pearson``, extra). Higher = more stable.

Each run is also compared with the family's mean map of the image: the mean of the runs' min-max
maps (over the runs whose map is not empty), turned into an 8-bit map. The run whose maps are least
similar to the family mean is reported as the outlier run.

Pairs that involve an empty map are excluded (NaN) and counted; a family of one run has no pairs
and gets value None.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import torch

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.measures.entropy import INPUT_SIZE_NOTE
from etm.ops.maps import is_empty, minmax01
from etm.ops.paper import to_uint8_truncated
from etm.ops.ssim import pearson, ssim
from etm.stats import DEFAULT_RESAMPLES, as_float, row_nanmean, summarize

NEEDS_FAMILY = "stability needs a family of >= 2 runs"


def run_pairs(k: int) -> list[tuple[int, int]]:
    """The pairs of runs in column order of the ``*_pairs`` columns."""
    return list(combinations(range(k), 2))


def family_mean_map8(natives: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """8-bit family mean map [N, h, w] from K native maps [N, h, w] and ``empty`` [N, K].

    Accumulated run by run in a fixed order (elementwise only), so the bits do not depend on how a
    reduction over runs would be split across threads.
    """
    keep = (~empty).to(torch.float64)
    acc = torch.zeros_like(natives[0], dtype=torch.float64)
    for k, nat in enumerate(natives):
        acc = acc + minmax01(nat) * keep[:, k].view(-1, 1, 1)
    count = keep.sum(dim=1).clamp_min(1.0)  # integers: exact whatever the order
    return to_uint8_truncated(acc / count.view(-1, 1, 1))


class StabilityMeasure(Measure):
    """Pairwise SSIM / Pearson of the runs' 8-bit native maps, and each run vs the family mean.

    Params: ``bootstrap_resamples`` (the engine passes the job's value).

    Columns: ``n_runs`` [N]; ``empty`` [N, K] bool; ``native_is_input_size`` [N]; with K >= 2 also
    ``ssim_pairs``, ``pearson_pairs`` [N, P] (pairs as ``run_pairs(K)``, NaN when a map of the pair
    is empty) and ``ssim_to_mean``, ``pearson_to_mean`` [N, K] (NaN for an empty map).
    """

    name = "stability"
    title = "Stability across runs"
    about = (
        "Similarity of the salience maps of independently trained runs. Higher: the recipe, not the seed, decides "
        "where the model looks."
    )
    variants = {"stability.ssim": ("paper", "higher"), "stability.pearson": ("extra", "higher")}
    notes = {
        "stability.ssim": "mean pairwise SSIM of 8-bit maps (paper)",
        "stability.pearson": "mean pairwise Pearson r",
    }

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        natives = [r.native for r in ctx.clean]
        empty_t = torch.stack([is_empty(m) for m in natives], dim=1)
        empty = empty_t.cpu().numpy()
        cols: Columns = {
            "n_runs": np.full(n, k, dtype=np.int64),
            "empty": empty,
            "native_is_input_size": np.full(n, any(r.native_is_input_size for r in ctx.clean)),
        }
        if k < 2:
            return cols
        maps8 = [to_uint8_truncated(m) for m in natives]
        pairs = run_pairs(k)
        # One batched call per pair (P <= 1225 for 50 runs); memory stays at one batch of maps.
        s_pairs = np.stack([ssim(maps8[i], maps8[j], 255.0).numpy() for i, j in pairs], axis=1)
        r_pairs = np.stack([pearson(maps8[i], maps8[j]).numpy() for i, j in pairs], axis=1)
        ii, jj = np.array(pairs).T
        bad = empty[:, ii] | empty[:, jj]
        s_pairs[bad] = np.nan
        r_pairs[bad] = np.nan
        mean8 = family_mean_map8(natives, empty_t.to(natives[0].device))
        s_mean = np.stack([ssim(m, mean8, 255.0).numpy() for m in maps8], axis=1)
        r_mean = np.stack([pearson(m, mean8).numpy() for m in maps8], axis=1)
        s_mean[empty] = np.nan
        r_mean[empty] = np.nan
        cols.update(ssim_pairs=s_pairs, pearson_pairs=r_pairs, ssim_to_mean=s_mean, pearson_to_mean=r_mean)
        return cols

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        k = int(cols["n_runs"][0]) if len(cols["n_runs"]) else 0
        empty = np.asarray(cols["empty"], dtype=bool)
        n_empty = int(empty.sum())
        input_size = bool(np.any(cols["native_is_input_size"]))
        params = {
            "map": "input-size 8-bit" if input_size else "native 8-bit",
            "map_8bit": "truncated (the authors' to_pil_image)",
            "data_range": 255,
            "bootstrap_resamples": reps,
        }
        out = []
        for variant, key in (("stability.ssim", "ssim"), ("stability.pearson", "pearson")):
            if k < 2:
                out.append(self.unavailable(variant, params, {"message": NEEDS_FAMILY, "n_runs": k}, n_empty))
                continue
            pairs = run_pairs(k)
            vals = np.asarray(cols[f"{key}_pairs"], dtype=np.float64)
            s = summarize(row_nanmean(vals), rng_seed, reps)
            matrix = np.eye(k)
            pair_means = row_nanmean(vals.T)  # mean over images, per pair
            for (i, j), m in zip(pairs, pair_means, strict=True):
                matrix[i, j] = matrix[j, i] = m
            to_mean = np.asarray(cols[f"{key}_to_mean"], dtype=np.float64)
            per_run = []
            for r in range(k):
                others = np.delete(matrix[r], r)
                per_run.append(
                    {
                        "run": r,
                        "similarity_to_family_mean": summarize(to_mean[:, r], rng_seed, reps),
                        "mean_similarity_to_other_runs": as_float(row_nanmean(others)),
                        "empty_maps": int(empty[:, r].sum()),
                    }
                )
            run_means = np.array([p["similarity_to_family_mean"]["value"] for p in per_run], dtype=float)
            ii, jj = np.array(pairs).T
            excluded = empty[:, ii] | empty[:, jj]
            details: dict[str, Any] = {
                "matrix": [[as_float(x) for x in row] for row in matrix],
                "pairs": [list(p) for p in pairs],
                "median": s["median"],
                "std": s["std"],
                "excluded_pairs": int(excluded.sum()),
                "undefined_pairs": int((np.isnan(vals) & ~excluded).sum()),
                "images_without_valid_pair": s["n_empty"],
                "outlier_run": int(np.nanargmin(run_means)) if np.isfinite(run_means).any() else None,
                "n_runs": k,
            }
            if key == "pearson":
                details["note"] = "Pearson r of the same 8-bit maps; NaN (undefined) for constant maps"
            if input_size:
                details["map_note"] = INPUT_SIZE_NOTE
            out.append(self.result(variant, s, params, details, row_nanmean(vals), n_empty=n_empty, per_run=per_run))
        return out
