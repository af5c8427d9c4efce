"""Localisation against human masks: ``agreement.rank_accuracy``, ``agreement.pointing_game``,
``agreement.topk_intersection`` (opt-in).

On the images whose dataset carries a mask (``ctx.has_mask``), the mask is binarised as ``mask >= mask_threshold``
(the region; 0.5 by default, as ``agreement.human.mass``) and each run's upsampled (input-size) map is compared
with it, as Quantus 0.6.0 computes them with its defaults:

- ``agreement.rank_accuracy`` (RelevanceRankAccuracy, Arras et al. 2022): with R the region's pixel count, the
  share of the map's R most salient pixels that lie in the region.
- ``agreement.pointing_game`` (PointingGame, Zhang et al. 2018): 1 if a pixel of maximal salience lies in the
  region (every tied maximum counts), else 0; its mean is the hit rate.
- ``agreement.topk_intersection`` (TopKIntersection): the share of the map's ``k`` most salient pixels that lie
  in the region (``concept_influence`` off).

Higher = closer to where people look. Ties in the order go to the lower pixel index (Quantus's ``argsort`` is
unstable, so equal to it whenever the map has no ties at the cut); Quantus's normalisation by the maximum
changes no order, so it is left out. An empty map or an empty region has no value (NaN, counted).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.agreement import NO_MASKS
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.ops.complexity import pointing_game, rank_accuracy, topk_intersection
from etm.ops.maps import is_empty
from etm.params import Param
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

RANK = "agreement.rank_accuracy"
POINTING = "agreement.pointing_game"
TOPK = "agreement.topk_intersection"
KEYS = {RANK: "rank_accuracy", POINTING: "pointing_game", TOPK: "topk_intersection"}
WHAT = {
    RANK: "share of the map's R most salient pixels inside the region (R = the region's pixels)",
    POINTING: "1 if a pixel of maximal salience is inside the region, else 0 (mean = hit rate)",
    TOPK: "share of the map's k most salient pixels inside the region",
}


class LocalisationMeasure(Measure):
    """Relevance rank accuracy, pointing game and top-k intersection between upsampled maps and binarised masks.

    Params: ``mask_threshold`` (region = ``mask >= mask_threshold``, in (0, 1], 0.5), ``k`` (pixels for the
    top-k intersection, 1000 as Quantus; at most the input's pixel count), ``bootstrap_resamples``.

    Columns: ``has_mask`` [N] bool; ``rank_accuracy``, ``pointing_game``, ``topk_intersection`` [N, K] float64
    (NaN without a mask, for an empty region or an empty map); ``empty`` [N, K] bool; ``region_share`` [N].
    """

    name = "localisation"
    title = "Localisation on human masks"
    about = (
        "Whether the most salient pixels fall inside the human-annotated region (rank accuracy, pointing game, "
        "top-k intersection). Higher: the model points where people point."
    )
    variants = {RANK: ("extra", "higher"), POINTING: ("extra", "higher"), TOPK: ("extra", "higher")}
    notes = {
        RANK: "share of the top-R pixels inside the mask (RelevanceRankAccuracy)",
        POINTING: "hit rate of the map's maximum in the mask (PointingGame)",
        TOPK: "share of the top-k pixels inside the mask (TopKIntersection)",
    }
    param_types = {
        "mask_threshold": Param(0.5, float, 0.0, 1.0, lo_open=True),
        "k": Param(1000, int, 1),
    }
    opt_in = True

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "mask_threshold": 0.5, "k": 1000}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        h, w = ctx.images.shape[-2:]
        top_k = int(self.params["k"])
        if top_k > h * w:
            raise BadInput(
                f"localisation parameter k = {top_k} exceeds the {h}x{w} = {h * w} pixels of the model's input; "
                f"pass measure_params.localisation.k <= {h * w}"
            )
        has = ctx.has_mask.detach().cpu().numpy().astype(bool)
        if ctx.masks is None:
            has = np.zeros(n, dtype=bool)
        cols: Columns = {
            "has_mask": has,
            "empty": np.zeros((n, k), dtype=bool),
            "region_share": np.full(n, np.nan),
        }
        for key in KEYS.values():
            cols[key] = np.full((n, k), np.nan)
        if not has.any():
            return cols
        assert ctx.masks is not None
        sel = torch.from_numpy(np.flatnonzero(has)).to(ctx.masks.device)
        mask = ctx.masks.index_select(0, sel).detach().cpu().numpy()
        region = mask >= float(self.params["mask_threshold"])
        cols["region_share"][has] = region.reshape(region.shape[0], -1).mean(axis=1)
        for r, res in enumerate(ctx.clean):  # loop over runs; each step is batched over images
            up = res.upsampled.index_select(0, sel.to(res.upsampled.device))
            emp = is_empty(up).cpu().numpy()
            values = {
                "rank_accuracy": rank_accuracy(up, region),
                "pointing_game": pointing_game(up, region),
                "topk_intersection": topk_intersection(up, region, top_k),
            }
            for key, v in values.items():
                v[emp] = np.nan
                cols[key][has, r] = v
            cols["empty"][has, r] = emp
        return cols

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        has = np.asarray(cols["has_mask"], dtype=bool)
        n_masked = int(has.sum())
        n_empty = int(np.asarray(cols["empty"])[has].sum())
        share = np.asarray(cols["region_share"], dtype=np.float64)[has]
        out = []
        for variant, key in KEYS.items():
            params: dict[str, Any] = {
                "map": "upsampled",
                "mask_threshold": float(self.params["mask_threshold"]),
                "region": "mask >= mask_threshold",
                "ties": "lower pixel index first",
                "bootstrap_resamples": reps,
            }
            if variant == TOPK:
                params["k"] = int(self.params["k"])
            if n_masked == 0:
                out.append(self.unavailable(variant, params, {"message": NO_MASKS}))
                continue
            masked = np.asarray(cols[key], dtype=np.float64)[has]
            s = summarize_runs(masked, rng_seed, reps)
            details = {
                "what": WHAT[variant],
                "median": s["median"],
                "std": s["std"],
                "images_with_mask": n_masked,
                "images_with_empty_region": int((share == 0).sum()),
                "mean_region_share": float(share.mean()) if share.size else None,
                "images_without_value": s["n_empty"],
            }
            out.append(self.result(variant, s, params, details, row_nanmean(masked), n_empty=n_empty))
        return out
