"""(b) ``oos.set``: how salience shifts on an out-of-set dataset.

In-set and out-of-set images go through the same clean pass. Reported (direction None: a shift is
described, not ranked):

- headline: mean salience entropy out-of-set minus in-set, CI from an independent two-sample
  bootstrap (the two image sets are different images, so no pairing);
- Wasserstein-1 distance between the two per-image entropy distributions;
- mean SSIM of each out-of-set 8-bit native map to the in-set mean 8-bit map (data range 255);
- the score distributions (probability of the target class) of both sets.

Per image, a family's value is the mean over its runs. Entropy is ``entropy.spatial`` by default
(param ``entropy: "histogram"`` for the paper's variant).

The in-set mean map is state carried from the in-set pass to the out-of-set pass, through the
``Measure`` hooks:

1. ``inset_state(ctx)``, per in-set batch: per run the int64 sum of the non-empty 8-bit native maps
   and their count; the plan adds these up over all batches and shards (integer sums, so the order
   does not matter);
2. ``finish_inset(sums)``, once before the out-of-set pass: ``ctx.inset["mean_map8"]`` = per run
   ``round(sums[k] / counts[k])`` as uint8 [h, w].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.measures.entropy import INPUT_SIZE_NOTE, histogram_entropy, spatial_entropy
from etm.ops.maps import is_empty, to_uint8
from etm.ops.ssim import ssim
from etm.params import Param
from etm.stats import (
    DEFAULT_RESAMPLES,
    as_float,
    histogram,
    row_nanmean,
    summarize,
    two_sample_difference,
)

NO_OOS = "no out-of-set dataset given (set ood_dataset)"
NO_INSET_STATE = "the in-set mean map was not available to the out-of-set pass"


class OosSetMeasure(Measure):
    """Shift of salience entropy, salience maps and scores between the in-set and an out-of-set.

    Params: ``bootstrap_resamples`` (the engine passes the job's value), ``entropy`` ("spatial" or
    "histogram"), ``bins`` (score/entropy histograms over [0, 1], 20).

    Columns, in-set: ``entropy``, ``score`` [N, K], ``empty`` [N, K], ``native_is_input_size`` [N].
    Out-of-set: the same plus ``ssim_to_inset_mean`` [N, K] (NaN for an empty map or a missing
    in-set mean map).
    """

    name = "oos_set"
    title = "Out-of-set shift"
    about = "Entropy on out-of-set images minus entropy in-set. No preferred direction."
    variants = {"oos.set": ("default", None)}
    notes = {"oos.set": "out-of-set minus in-set entropy"}
    param_types = {
        "entropy": Param("spatial", str, choices=("spatial", "histogram")),
        "bins": Param(20, int, 1, 10_000),
    }
    needs_oos = True

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "entropy": "spatial", "bins": 20}

    def _entropy(self, native: torch.Tensor) -> np.ndarray:
        kind = self.params["entropy"]
        if kind == "spatial":
            return spatial_entropy(native).numpy()
        if kind == "histogram":
            return histogram_entropy(to_uint8(native)).numpy()
        raise ValueError(f"oos_set param 'entropy' must be 'spatial' or 'histogram', got {kind!r}")

    def per_image(self, ctx: BatchContext) -> Columns:
        ent, score, empty = [], [], []
        for res in ctx.clean:
            emp = is_empty(res.native).cpu().numpy()
            e = self._entropy(res.native)
            e[emp] = np.nan
            ent.append(e)
            score.append(res.scores.detach().cpu().double().numpy())
            empty.append(emp)
        return {
            "entropy": np.stack(ent, axis=1),
            "score": np.stack(score, axis=1),
            "empty": np.stack(empty, axis=1),
            "native_is_input_size": np.full(len(ctx.keys), any(r.native_is_input_size for r in ctx.clean)),
        }

    def per_image_oos(self, ctx: BatchContext) -> Columns:
        cols = self.per_image(ctx)
        means = ctx.inset.get("mean_map8")
        n, k = cols["entropy"].shape
        sim = np.full((n, k), np.nan)
        for r, res in enumerate(ctx.clean):
            if means is None or r >= len(means) or means[r] is None:
                continue
            mean8 = means[r].to(res.native.device).expand_as(res.native)
            sim[:, r] = ssim(to_uint8(res.native), mean8, 255.0).numpy()
        sim[cols["empty"]] = np.nan
        cols["ssim_to_inset_mean"] = sim
        cols["has_inset_mean"] = np.full(n, means is not None)
        return cols

    def inset_state(self, ctx: BatchContext) -> dict[str, np.ndarray] | None:
        """Per run, the int64 sum of the batch's non-empty 8-bit native maps ``sums`` [K, h, w] and their
        count ``counts`` [K]."""
        sums, counts = [], []
        for res in ctx.clean:
            keep = ~is_empty(res.native)
            maps8 = to_uint8(res.native).to(torch.int64) * keep.view(-1, 1, 1)
            sums.append(maps8.sum(dim=0).cpu())
            counts.append(keep.sum().cpu())
        return {"sums": torch.stack(sums).numpy(), "counts": torch.stack(counts).to(torch.int64).numpy()}

    def finish_inset(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
        """``mean_map8``: per run the uint8 [h, w] mean map ``round(sum / n)`` (half to even), or None for
        a run whose in-set maps were all empty."""
        if "sums" not in sums:  # no in-set batch gave maps
            return {}
        means: list[torch.Tensor | None] = []
        for s, c in zip(torch.from_numpy(sums["sums"]), torch.from_numpy(sums["counts"]), strict=True):
            n = int(c)
            means.append(torch.round(s.to(torch.float64) / n).to(torch.uint8) if n > 0 else None)
        return {"mean_map8": means, "inset_counts": [int(c) for c in sums["counts"]]}

    def _scores(self, values: np.ndarray, seed: int, reps: int, bins: int) -> dict[str, Any]:
        per_image = row_nanmean(values)
        return {**summarize(per_image, seed, reps), "histogram": histogram(per_image, bins, (0.0, 1.0))}

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        bins = int(self.params["bins"])
        kind, direction = self.variants["oos.set"]
        params = {"entropy": f"entropy.{self.params['entropy']}", "bootstrap_resamples": reps, "ssim_data_range": 255}
        if not oos_cols or not len(oos_cols.get("entropy", ())):
            return [self.unavailable("oos.set", params, {"message": NO_OOS})]
        h_in, h_out = cols["entropy"], oos_cols["entropy"]
        in_img, out_img = row_nanmean(h_in), row_nanmean(h_out)
        diff = two_sample_difference(out_img, in_img, rng_seed, reps)
        sim = oos_cols["ssim_to_inset_mean"]
        per_run = []
        for r in range(h_in.shape[1]):
            per_run.append(
                {
                    "run": r,
                    "entropy_difference": two_sample_difference(h_out[:, r], h_in[:, r], rng_seed, reps),
                    "wasserstein1": _w1(h_out[:, r], h_in[:, r]),
                    "ssim_to_inset_mean": summarize(sim[:, r], rng_seed, reps),
                }
            )
        details: dict[str, Any] = {
            "headline": "mean entropy (out-of-set) - mean entropy (in-set)",
            "entropy_difference": diff,
            "wasserstein1": _w1(out_img, in_img),
            "entropy_inset": {**summarize(in_img, rng_seed, reps), "histogram": histogram(in_img, bins)},
            "entropy_ood": {**summarize(out_img, rng_seed, reps), "histogram": histogram(out_img, bins)},
            "ssim_to_inset_mean": summarize(row_nanmean(sim), rng_seed, reps),
            "scores": {
                "inset": self._scores(cols["score"], rng_seed, reps, bins),
                "ood": self._scores(oos_cols["score"], rng_seed, reps, bins),
            },
            "n_inset": int(np.isfinite(in_img).sum()),
            "n_ood": int(np.isfinite(out_img).sum()),
            "empty_maps": {"inset": int(np.sum(cols["empty"])), "ood": int(np.sum(oos_cols["empty"]))},
        }
        if not np.all(oos_cols.get("has_inset_mean", True)):
            details["ssim_note"] = NO_INSET_STATE
        if np.any(cols["native_is_input_size"]) or np.any(oos_cols["native_is_input_size"]):
            details["note"] = INPUT_SIZE_NOTE
        return [
            MeasureResult(
                name="oos.set",
                value=diff["mean_diff"],
                ci=diff["ci"],
                n=diff["n_a"],
                direction=direction,
                variant=kind,
                parameters=params,
                n_empty=int(np.sum(cols["empty"]) + np.sum(oos_cols["empty"])),
                per_run=per_run,
                details=details,
            )
        ]


def _w1(a: np.ndarray, b: np.ndarray) -> float | None:
    """Wasserstein-1 distance between the finite values of two samples (None if either is empty)."""
    from scipy.stats import wasserstein_distance  # here: scipy.stats costs ~1.3 s to import in every model process

    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    if fa.size == 0 or fb.size == 0:
        return None
    return as_float(wasserstein_distance(fa, fb))
