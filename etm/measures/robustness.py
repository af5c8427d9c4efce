"""Robustness of the maps to small input noise: ``robustness.max_sensitivity`` and ``robustness.avg_sensitivity``
(Yeh et al. 2019), opt-in.

As Quantus 0.6.0 ``MaxSensitivity`` / ``AvgSensitivity`` with their defaults: for each of ``n_samples`` draws, noise
uniform in ``[-radius, radius]`` is added to every element (pixel and channel) of the image in [0, 1] (not clipped,
as Quantus), the salience of the noisy image is computed with the job's method, target rule and layer, and the
sensitivity of that draw is ``||map' - map||_2 / ||map||_2`` (Frobenius norms of the flattened maps). Per image,
``max_sensitivity`` is the largest over the draws, ``avg_sensitivity`` the mean (NaN draws ignored, as Quantus's
``nanmax``/``nanmean``). Lower = the explanation changes less under imperceptible noise = more robust.

The draws of an image are a pure function of its seed (``ctx.image_seeds``) and the draw's index (one keyed stream
per draw, ``keyed_uniform``), so a sharded job draws what an unsharded one does, adding draws keeps the first ones,
and every run of a family sees the same noisy images. Both variants come from the same draws (one salience pass per
draw and run). An empty clean map (norm 0) has no value (NaN, counted). The target is re-decided on the noisy image
by the job's rule (Quantus explains ``y_batch``; with the default ``predicted`` target the two differ only on draws
that flip the prediction, whose share the details report).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.measures.entropy import INPUT_SIZE_NOTE
from etm.ops.random import keyed_uniform, stream_id
from etm.params import Param
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize, summarize_runs

MAX = "robustness.max_sensitivity"
AVG = "robustness.avg_sensitivity"


def sensitivity_noise(seeds: torch.Tensor, sample: int, shape: tuple[int, ...], radius: float) -> torch.Tensor:
    """The uniform noise of draw ``sample`` for each image: float64 [N, *shape] in [-radius, radius)."""
    u = keyed_uniform(seeds, stream_id("robustness.sensitivity", sample), shape)
    return (u.double() * 2.0 - 1.0) * radius


def perturbed(images: torch.Tensor, seeds: torch.Tensor, sample: int, radius: float) -> torch.Tensor:
    """``images`` plus draw ``sample``'s noise, added in float64, unclipped, back to the images' dtype."""
    noise = sensitivity_noise(seeds.cpu(), sample, tuple(images.shape[1:]), radius).to(images.device)
    return (images.double() + noise).to(images.dtype)


def relative_change(clean: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """``||other - clean||_2 / ||clean||_2`` per map, float64 [N]; NaN where the clean map is all zero."""
    a = clean.detach().to("cpu", torch.float64).flatten(1).numpy()
    b = other.detach().to("cpu", torch.float64).flatten(1).numpy()
    den = np.linalg.norm(a, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.linalg.norm(a - b, axis=1) / np.where(den > 0, den, 1.0), np.nan)


class RobustnessMeasure(Measure):
    """Max and average sensitivity of the maps under uniform input noise.

    Params: ``n_samples`` (draws per image, 200) and ``radius`` (the noise bound on images in [0, 1], 0.2): Quantus's
    defaults (``nr_samples``, ``lower_bound``), as the contract asks. Quantus adds its noise to whatever array it
    is given, often the normalised input, where 0.2 is a quarter of this (0.05 here for the benchmark's std of
    0.25); 200 draws cost 200 salience passes per image and run, so jobs usually pass fewer. ``map``
    (``upsampled``, the input-size map Quantus compares, or ``native``), ``bootstrap_resamples``.

    Columns: ``sensitivity`` [N, K, S] float64 (S draws; NaN for an empty clean map); ``prediction_changed``
    [N, K, S] bool; ``native_is_input_size`` [N] bool.
    """

    name = "robustness"
    title = "Robustness to input noise"
    about = (
        "How much the map changes when imperceptible uniform noise is added to the image (relative change of the "
        "map, worst and average over draws). Lower: the explanation is more stable."
    )
    variants = {MAX: ("extra", "lower"), AVG: ("extra", "lower")}
    notes = {
        MAX: "largest relative map change over noise draws (MaxSensitivity)",
        AVG: "mean relative map change over noise draws (AvgSensitivity)",
    }
    param_types = {
        "n_samples": Param(200, int, 1, 10_000),
        "radius": Param(0.2, float, 0.0, 1.0, lo_open=True),
        "map": Param("upsampled", str, choices=("upsampled", "native")),
    }
    opt_in = True

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "n_samples": 200, "radius": 0.2, "map": "upsampled"}

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        return {"salience": n_runs * int(self.params["n_samples"]), "forward": 0}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        s_count = int(self.params["n_samples"])
        radius = float(self.params["radius"])
        key = self.params["map"]
        sens = np.full((n, k, s_count), np.nan)
        changed = np.zeros((n, k, s_count), dtype=bool)
        for s in range(s_count):  # draws outside, runs inside: each noisy batch is made once for all runs
            noisy = perturbed(ctx.images, ctx.image_seeds, s, radius)
            for r, clean in enumerate(ctx.clean):
                res = ctx.salience_fn(r, noisy)
                sens[:, r, s] = relative_change(getattr(clean, key), getattr(res, key))
                changed[:, r, s] = (res.predicted.cpu() != clean.predicted.cpu()).numpy()
        return {
            "sensitivity": sens,
            "prediction_changed": changed,
            "native_is_input_size": np.full(n, any(r.native_is_input_size for r in ctx.clean)),
        }

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        sens = np.asarray(cols["sensitivity"], dtype=np.float64)
        ok = np.isfinite(sens)
        with np.errstate(invalid="ignore"):
            worst = np.where(ok.any(axis=2), np.where(ok, sens, -np.inf).max(axis=2), np.nan)
        mean = row_nanmean(sens)
        changed = np.asarray(cols["prediction_changed"], dtype=bool)
        params = {
            "n_samples": int(self.params["n_samples"]),
            "radius": float(self.params["radius"]),
            "noise": "uniform in [-radius, radius] per pixel and channel, images in [0, 1], not clipped",
            "map": self.params["map"],
            "norm": "Frobenius (L2 of the flattened map), numerator and denominator",
            "bootstrap_resamples": reps,
        }
        out = []
        for variant, values, what in (
            (MAX, worst, "max over draws of ||map(x + noise) - map(x)|| / ||map(x)||"),
            (AVG, mean, "mean over draws of ||map(x + noise) - map(x)|| / ||map(x)||"),
        ):
            s = summarize_runs(values, rng_seed, reps)
            details: dict[str, Any] = {
                "what": what,
                "median": s["median"],
                "std": s["std"],
                "images_without_value": s["n_empty"],
                "prediction_changed_share": summarize(changed.mean(axis=(1, 2)), rng_seed, reps),
            }
            if self.params["map"] == "native" and bool(np.any(cols["native_is_input_size"])):
                details["note"] = INPUT_SIZE_NOTE
            out.append(self.result(variant, s, params, details, row_nanmean(values)))
        return out
