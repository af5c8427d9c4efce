"""(c) Following geometric transformations: does salience move with the image?

For each transform T (the paper's 12 by default: flips, 90-degree rotations, 8 translations by
16 px at 224 px) and each run, salience is computed on ``T(x)`` and ``S(T(x))`` is compared with
``T(S(x))`` on the *upsampled* maps, over the valid region only (pixels that came from padding are
excluded). Both maps are min-max normalised to [0, 1] over the valid region, then compared with

- ``geometry.ssim`` (default): SSIM with data range 1, averaged over the 7x7 windows that lie fully
  inside the valid region;
- ``geometry.pearson`` (extra): Pearson r over the valid pixels.

Also reported: the prediction flip rate under T (argmax of ``T(x)`` differs from that of ``x``).
Per transform, and overall: per image and run the mean over transforms, then averaged over runs and
images (CIs over images). Higher similarity = better. A comparison where either map is empty over
the valid region is excluded and counted. 90-degree rotations of non-square inputs are skipped
(they change the shape) and the report says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.ops.geometry import PAPER_TRANSFORMS, get_transform, resolve_transforms
from etm.ops.maps import minmax01
from etm.ops.ssim import pearson, ssim
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

METRICS = ("ssim", "pearson")


def _empty_over(maps: torch.Tensor, valid: torch.Tensor | None) -> np.ndarray:
    """Maps with no positive value inside ``valid`` (everywhere when None): [N] bool."""
    inside = maps > 0 if valid is None else (maps > 0) & valid
    return (~inside.flatten(1).any(dim=1)).cpu().numpy()


class GeometryMeasure(Measure):
    """Similarity of ``S(T(x))`` and ``T(S(x))`` and the prediction flip rate, per transform.

    Params: ``transforms`` (default the paper's 12), ``extra_transforms`` (appended, e.g.
    ``["rot_15", "scale_1.1"]``), ``bootstrap_resamples`` (the engine passes the job's value).

    Columns: ``ssim``, ``pearson``, ``flip`` [N, K, T] float64 (T transforms in the order of
    ``transform_names``; NaN = excluded comparison; flip is 0/1); ``square`` [N] bool (whether the
    input was square, which decides whether the 90-degree rotations ran).
    """

    name = "geometry"
    title = "Geometric consistency"
    about = "Does salience move with the image under flips, rotations and shifts? Higher: it follows the content."
    variants = {"geometry.ssim": ("default", "higher"), "geometry.pearson": ("extra", "higher")}
    notes = {
        "geometry.ssim": "SSIM after undoing the transform",
        "geometry.pearson": "Pearson r after undoing the transform",
    }

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        names = self.requested()
        if not names:
            raise BadInput("geometry needs at least one transform")
        for name in names:  # validate names up front, before any pass runs
            try:
                get_transform(name, 224, 224)
            except ValueError as e:
                raise BadInput(str(e)) from e

    def default_params(self) -> dict[str, Any]:
        return {"transforms": list(PAPER_TRANSFORMS), "extra_transforms": [], "bootstrap_resamples": DEFAULT_RESAMPLES}

    def requested(self) -> list[str]:
        """All requested transform names, de-duplicated, in order."""
        return list(dict.fromkeys([*self.params["transforms"], *self.params["extra_transforms"]]))

    def transform_names(self, square: bool) -> list[str]:
        """The transforms that run (and the column order) for square or non-square inputs."""
        return [n for n in self.requested() if square or not n.startswith("rot90")]

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        return {"salience": n_runs * len(self.requested()), "forward": 0}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        h, w = ctx.images.shape[-2:]
        transforms, _ = resolve_transforms(self.requested(), h, w)
        cols = {m: np.full((n, k, len(transforms)), np.nan) for m in (*METRICS, "flip")}
        for t, tf in enumerate(transforms):
            moved, valid = tf(ctx.images)  # made once per transform, shared by the runs
            # Flips and 90-degree rotations keep every pixel: no mask then gives the same bits (the
            # same min, max, SSIM windows and sums) without SSIM's pooled window mask.
            mask = None if bool(valid.all()) else valid
            for r, clean in enumerate(ctx.clean):
                res = ctx.salience_fn(r, moved)
                expected, _ = tf(clean.upsampled)
                a = minmax01(res.upsampled, mask)
                b = minmax01(expected, mask)
                excluded = _empty_over(res.upsampled, mask) | _empty_over(expected, mask)
                s = ssim(a, b, 1.0, mask=mask).numpy()
                p = pearson(a, b, mask=mask).numpy()
                s[excluded] = np.nan
                p[excluded] = np.nan
                cols["ssim"][:, r, t] = s
                cols["pearson"][:, r, t] = p
                cols["flip"][:, r, t] = (res.predicted.cpu() != clean.predicted.cpu()).numpy()
        cols["square"] = np.full(n, h == w)
        return cols

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        square = bool(np.all(cols["square"])) if len(cols["square"]) else True
        names = self.transform_names(square)
        notes = (
            []
            if square
            else [
                f"{n} skipped: the input is not square, so a 90-degree rotation changes the shape"
                for n in self.requested()
                if n not in names
            ]
        )
        flip = np.asarray(cols["flip"], dtype=np.float64)
        flip_per = {name: summarize_runs(flip[:, :, t], rng_seed, reps) for t, name in enumerate(names)}
        flip_all = summarize_runs(row_nanmean(flip), rng_seed, reps)
        params = {
            "transforms": names,
            "maps": "upsampled, min-max over the valid region",
            "data_range": 1.0,
            "bootstrap_resamples": reps,
        }
        out = []
        for variant, key in (("geometry.ssim", "ssim"), ("geometry.pearson", "pearson")):
            v = np.asarray(cols[key], dtype=np.float64)
            overall = summarize_runs(row_nanmean(v), rng_seed, reps)  # mean over transforms first
            per_transform = {
                name: {
                    "similarity": summarize_runs(v[:, :, t], rng_seed, reps),
                    "flip_rate": flip_per[name],
                    "excluded": int(np.isnan(v[:, :, t]).sum()),
                }
                for t, name in enumerate(names)
            }
            details: dict[str, Any] = {
                "per_transform": per_transform,
                "flip_rate": flip_all,
                "excluded_comparisons": int(np.isnan(v).sum()),
                "overall": "per image and run, the mean over transforms; then over runs and images",
            }
            if notes:
                details["notes"] = notes
            out.append(self.result(variant, overall, params, details, row_nanmean(row_nanmean(v))))
        return out
