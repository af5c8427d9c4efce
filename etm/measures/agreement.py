"""Agreement of model salience with human salience annotations (beyond the paper).

On images whose dataset carries a mask (``ctx.has_mask``), each run's upsampled map is compared with
the mask. Three results, all extra and higher = closer to human reasoning:

- ``agreement.human`` (headline): Pearson r between map and mask.
- ``agreement.human.ssim``: SSIM of the map and the mask, both min-max normalised to [0, 1]
  (data range 1).
- ``agreement.human.mass``: share of the map's salience mass inside the region ``mask >= 0.5``.

They are separate results (not details of one) so that each gets its own CI, n and ranking.
Empty maps are NaN and counted; a constant mask (e.g. all ones) has no defined Pearson r (NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.ops.maps import is_empty, minmax01, per_map_sum
from etm.ops.ssim import pearson, ssim
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

NO_MASKS = "no image carries a human salience annotation (a mask with the same file stem)"
REGION_THRESHOLD = 0.5


class AgreementMeasure(Measure):
    """Pearson r, SSIM and salience-mass share between upsampled maps and human masks.

    Params: ``bootstrap_resamples`` (the engine passes the job's value).

    Columns: ``has_mask`` [N] bool; ``pearson``, ``ssim``, ``mass`` [N, K] float64 (NaN without a
    mask or for an empty map); ``empty`` [N, K] bool (only meaningful where ``has_mask``).
    """

    name = "agreement"
    title = "Agreement with people"
    about = "How well salience matches human annotation masks. Higher: the model looks where people look."
    variants = {
        "agreement.human": ("extra", "higher"),
        "agreement.human.ssim": ("extra", "higher"),
        "agreement.human.mass": ("extra", "higher"),
    }
    notes = {
        "agreement.human": "Pearson r of map and mask",
        "agreement.human.ssim": "SSIM of map and mask",
        "agreement.human.mass": "share of salience inside the mask",
    }

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        has = ctx.has_mask.detach().cpu().numpy().astype(bool)
        if ctx.masks is None:
            has = np.zeros(n, dtype=bool)
        cols: Columns = {"has_mask": has, "empty": np.zeros((n, k), dtype=bool)}
        for key in ("pearson", "ssim", "mass"):
            cols[key] = np.full((n, k), np.nan)
        if not has.any():
            return cols
        assert ctx.masks is not None
        sel = torch.from_numpy(np.flatnonzero(has)).to(ctx.masks.device)
        mask = ctx.masks.index_select(0, sel)
        mask01 = minmax01(mask)
        region = (mask >= REGION_THRESHOLD).to(torch.float64)
        for r, res in enumerate(ctx.clean):  # loop over runs; each step is batched over images
            up = res.upsampled.index_select(0, sel.to(res.upsampled.device)).to(mask.device)
            emp = is_empty(up).cpu().numpy()
            up01 = minmax01(up)
            pos = up.to(torch.float64).clamp_min(0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mass = per_map_sum(pos * region) / per_map_sum(pos)
            values = {"pearson": pearson(up01, mask01).numpy(), "ssim": ssim(up01, mask01, 1.0).numpy(), "mass": mass}
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
        out = []
        for variant, key, what in (
            ("agreement.human", "pearson", "Pearson r between the upsampled map and the mask"),
            ("agreement.human.ssim", "ssim", "SSIM of the min-max upsampled map and mask (data range 1)"),
            ("agreement.human.mass", "mass", f"share of salience mass where mask >= {REGION_THRESHOLD}"),
        ):
            params = {"map": "upsampled", "bootstrap_resamples": reps}
            if key == "mass":
                params["region_threshold"] = REGION_THRESHOLD
            if n_masked == 0:
                out.append(self.unavailable(variant, params, {"message": NO_MASKS}))
                continue
            masked = np.asarray(cols[key])[has]
            s = summarize_runs(masked, rng_seed, reps)
            details = {
                "what": what,
                "median": s["median"],
                "std": s["std"],
                "images_with_mask": n_masked,
                "images_without_value": s["n_empty"],
            }
            out.append(self.result(variant, s, params, details, row_nanmean(masked), n_empty=n_empty))
        return out
