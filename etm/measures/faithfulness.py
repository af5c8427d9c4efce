"""Faithfulness by removal and insertion: ``degradation.road`` and ``degradation.insertion``, opt-in.

``degradation.road`` (Rong et al. 2022, ROAD: RemOve And Debias). For each percentage k (1, 3, ..., 99 by default,
Quantus's; pytorch-grad-cam's are 10, ..., 90), the k% most (MoRF) or least (LeRF) salient pixels of the clean
upsampled map are removed, all channels of a pixel together, ``int(H * W * k / 100)`` pixels (Quantus's count), ties
in the map by pixel index. Removed pixels are imputed by noisy linear imputation (``etm.ops.road``: the 8-neighbour
linear system, plus Gaussian noise of standard deviation ``noise``, 0.01 as both reference implementations), and the
score of the clean image's target class is recorded. Per image: ``mean_k (score_LeRF(k) - score_MoRF(k)) / 2``,
which is pytorch-grad-cam's ``ROADCombined`` (its score differences share the clean score, which cancels). Higher =
removing what the map calls salient hurts more than removing what it calls irrelevant = a more faithful map. The
details also give Quantus's ROAD curve: the share of images whose predicted class stays the clean target after
removal. The noise of an image at percentage k is keyed by its seed and k (the same field for MoRF and LeRF), so
shards and batches draw the same noise.

``degradation.insertion`` (Petsiuk et al. 2018, RISE's insertion game): start from the image blurred with sigma
``insertion_sigma`` (5 px at 224 px, Petsiuk's blur, scaled with the input as ``degradation``'s lengths) or from
the constant ``mean_color``, then put the original pixels back in MoRF order; the target score at each of
``steps`` (percent inserted) gives the curve, and its trapezoid area over [0, 1] is the value. Higher = the
pixels the map ranks first restore the decision sooner = a more faithful map.

Images whose clean map is empty have no salience order: NaN, counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult, score_description
from etm.measures.degradation import deleted_counts, deletion_ranks
from etm.ops.blur import gaussian_blur
from etm.ops.maps import is_empty
from etm.ops.random import stream_id
from etm.ops.road import gaussian_noise, noisy_linear_imputation
from etm.params import Param
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs, trapezoid_auc

ROAD = "degradation.road"
INSERTION = "degradation.insertion"
ROAD_ORDERS = ("morf", "lerf")


def road_stream(percentage: float) -> int:
    """The noise stream of ROAD at ``percentage`` (keyed by value, so adding a percentage changes no other)."""
    return stream_id("degradation.road", f"{float(percentage):.9g}")


def road_draws(seeds: torch.Tensor, percentage: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The standard normal field of ROAD's imputation noise at ``percentage``: float64 [N, *shape]."""
    return gaussian_noise(seeds.cpu(), road_stream(percentage), shape)


def road_counts(percentages: list[float], n_pixels: int) -> list[int]:
    """Pixels removed at each percentage: ``int(n_pixels * k / 100)``, Quantus's expression (floor), at most
    ``n_pixels - 1`` (imputation needs a known pixel)."""
    return [min(int(n_pixels * k / 100), n_pixels - 1) for k in percentages]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _increasing(values: Any, lo: float, hi: float, open_ends: bool, what: str, min_len: int) -> list[float]:
    ok = isinstance(values, list | tuple) and len(values) >= min_len
    try:
        v = [float(x) for x in values] if ok else []
    except (TypeError, ValueError):
        ok, v = False, []
    inside = all((lo < x < hi) if open_ends else (lo <= x <= hi) for x in v)
    if not ok or not inside or any(b <= a for a, b in zip(v, v[1:], strict=False)):
        span = f"strictly between {lo:g} and {hi:g}" if open_ends else f"in [{lo:g}, {hi:g}]"
        raise BadInput(f"{what} must be >= {min_len} strictly increasing percentages {span}, got {values!r}")
    return v


class FaithfulnessMeasure(Measure):
    """ROAD (MoRF and LeRF with noisy linear imputation) and the insertion game.

    Params: ``variants`` (a non-empty subset of the two; both by default), ``percentages`` (ROAD, strictly between 0
    and 100, Quantus's 1..99 by 2 by default), ``noise`` (ROAD's imputation noise std, 0.01), ``steps`` (insertion,
    percent inserted, 0..100 by 10), ``insertion_start`` (``blur`` or ``mean``), ``insertion_sigma`` (5),
    ``mean_color`` (RGB in [0, 1]), ``reference_size`` (224; null = sigma in plain pixels), ``bootstrap_resamples``.

    Columns: ROAD: ``road_morf``, ``road_lerf`` [N, K, P] (score after removal), ``road_kept_morf``,
    ``road_kept_lerf`` [N, K, P] (the predicted class is still the clean target); insertion: ``insertion``
    [N, K, S]. NaN = an empty clean map.
    """

    name = "faithfulness"
    title = "Faithfulness: ROAD and insertion"
    about = (
        "Score after removing the most vs least salient pixels with debiased imputation (ROAD), and how fast the "
        "score returns when the most salient pixels are put back first (insertion). Higher: the map ranks the "
        "pixels that drive the decision first."
    )
    variants = {ROAD: ("extra", "higher"), INSERTION: ("extra", "higher")}
    notes = {
        ROAD: "ROAD: mean over k of (score LeRF - score MoRF) / 2, noisy linear imputation",
        INSERTION: "area under the insertion curve (most salient pixels restored first)",
    }
    curve_titles = {
        "road_morf": "ROAD MoRF: most salient removed and imputed",
        "road_lerf": "ROAD LeRF: least salient removed and imputed",
        "insertion": "insertion: most salient restored first",
    }
    param_types = {
        "noise": Param(0.01, float, 0.0, 1.0),
        "insertion_start": Param("blur", str, choices=("blur", "mean")),
        "insertion_sigma": Param(5.0, float, 0.0, 1000.0, lo_open=True),
        "reference_size": Param(224, int, 1, 100_000, nullable=True),
    }
    opt_in = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        if not isinstance(p["variants"], list | tuple) or not p["variants"] or any(
            v not in self.variants for v in p["variants"]
        ):
            raise BadInput(f"faithfulness variants must be a non-empty subset of {list(self.variants)}, "
                           f"got {p['variants']!r}")
        p["variants"] = [v for v in self.variants if v in p["variants"]]
        p["percentages"] = _increasing(p["percentages"], 0.0, 100.0, True, "faithfulness percentages", 1)
        p["steps"] = _increasing(p["steps"], 0.0, 100.0, False, "faithfulness insertion steps", 2)
        color = p["mean_color"]
        if (
            not isinstance(color, list | tuple) or len(color) != 3
            or any(isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 1 for c in color)
        ):
            raise BadInput(f"faithfulness mean_color must be 3 numbers in [0, 1] (RGB), got {color!r}")

    def default_params(self) -> dict[str, Any]:
        return {
            "variants": [ROAD, INSERTION],
            "percentages": [float(k) for k in range(1, 100, 2)],  # Quantus's default (pytorch-grad-cam: 10..90)
            "noise": 0.01,
            "steps": [float(s) for s in range(0, 101, 10)],
            "insertion_start": "blur",
            "insertion_sigma": 5.0,
            "mean_color": [0.5, 0.5, 0.5],
            "reference_size": 224,
            "bootstrap_resamples": DEFAULT_RESAMPLES,
        }

    def _on(self, variant: str) -> bool:
        return variant in self.params["variants"]

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        forward = 0
        if self._on(ROAD):
            forward += len(ROAD_ORDERS) * len(self.params["percentages"])
        if self._on(INSERTION):
            forward += sum(1 for s in self.params["steps"] if s < 100)  # at 100 % it is the clean image's pass
        return {"salience": 0, "forward": n_runs * forward}

    def per_image(self, ctx: BatchContext) -> Columns:
        cols: Columns = {}
        if self._on(ROAD):
            cols.update(self._road(ctx))
        if self._on(INSERTION):
            cols.update(self._insertion(ctx))
        return cols

    # -- ROAD --------------------------------------------------------------------------------------------------
    def _road(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        c, h, w = ctx.images.shape[1:]
        pcts = self.params["percentages"]
        counts = road_counts(pcts, h * w)
        noise = float(self.params["noise"])
        images = ctx.images.detach().cpu()
        draws = [road_draws(ctx.image_seeds, p, (c, h, w)) if noise else None for p in pcts]
        out = {f"road_{o}": np.full((n, k, len(pcts)), np.nan) for o in ROAD_ORDERS}
        kept = {f"road_kept_{o}": np.full((n, k, len(pcts)), np.nan) for o in ROAD_ORDERS}
        for r, clean in enumerate(ctx.clean):
            targets = clean.targets.to(ctx.device)
            ranks = deletion_ranks(clean.upsampled.to(ctx.device), ctx.image_seeds, ROAD_ORDERS).cpu()  # [2, N, P]
            empty = is_empty(clean.upsampled).cpu().numpy()
            for o, order in enumerate(ROAD_ORDERS):
                for j, m in enumerate(counts):
                    imputed = torch.stack([
                        noisy_linear_imputation(
                            images[i], (ranks[o, i] < m).view(h, w), noise,
                            None if draws[j] is None else draws[j][i],
                        )
                        for i in range(n)
                    ]).to(ctx.device)
                    logits = ctx.logits_fn(r, imputed)
                    out[f"road_{order}"][:, r, j] = _np(ctx.score_of(r, logits, targets))
                    kept[f"road_kept_{order}"][:, r, j] = _np(logits.argmax(dim=1) == targets)
            for key in (*out, *kept):
                (out if key in out else kept)[key][empty, r, :] = np.nan
        return {**out, **kept}

    # -- insertion ---------------------------------------------------------------------------------------------
    def start_image(self, images: torch.Tensor) -> torch.Tensor:
        """The insertion game's start: the blurred image or the constant colour, [N, 3, H, W]."""
        if self.params["insertion_start"] == "blur":
            ref = self.params["reference_size"]
            scale = 1.0 if ref is None else min(images.shape[-2:]) / float(ref)
            return gaussian_blur(images, float(self.params["insertion_sigma"]) * scale)
        color = torch.tensor(self.params["mean_color"], dtype=images.dtype, device=images.device)
        return color.view(1, 3, 1, 1).expand_as(images).clone()

    def _insertion(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        h, w = ctx.images.shape[-2:]
        steps = self.params["steps"]
        counts = deleted_counts([s / 100 for s in steps], h * w)
        start = self.start_image(ctx.images)
        curve = np.full((n, k, len(steps)), np.nan)
        for r, clean in enumerate(ctx.clean):
            targets = clean.targets.to(ctx.device)
            rank = deletion_ranks(clean.upsampled.to(ctx.device), ctx.image_seeds, ("morf",))[0]  # [N, P]
            for j, m in enumerate(counts):
                if m == h * w:
                    curve[:, r, j] = _np(ctx.clean_scores(r))
                    continue
                inserted = (rank < m).view(n, 1, h, w)
                curve[:, r, j] = _np(ctx.scores(r, torch.where(inserted, ctx.images, start), targets))
            curve[is_empty(clean.upsampled).cpu().numpy(), r, :] = np.nan
        return {"insertion": curve}

    # -- summary -----------------------------------------------------------------------------------------------
    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        out = []
        if self._on(ROAD):
            out.append(self._summarize_road(cols, rng_seed, reps))
        if self._on(INSERTION):
            out.append(self._summarize_insertion(cols, rng_seed, reps))
        return out

    def _summarize_road(self, cols: Columns, seed: int, reps: int) -> MeasureResult:
        pcts = self.params["percentages"]
        morf = np.asarray(cols["road_morf"], dtype=np.float64)
        lerf = np.asarray(cols["road_lerf"], dtype=np.float64)
        head_values = (lerf - morf).mean(axis=2) / 2.0  # [N, K]; NaN rows stay NaN (empty maps)
        head = summarize_runs(head_values, seed, reps)
        curves = {
            f"road_{o}": [
                {"k": float(p), **summarize_runs(np.asarray(cols[f"road_{o}"], np.float64)[:, :, j], seed, reps)}
                for j, p in enumerate(pcts)
            ]
            for o in ROAD_ORDERS
        }
        accuracy = {
            o: [
                {"k": float(p), **summarize_runs(np.asarray(cols[f"road_kept_{o}"], np.float64)[:, :, j], seed, reps)}
                for j, p in enumerate(pcts)
            ]
            for o in ROAD_ORDERS
        }
        details: dict[str, Any] = {
            "headline": "mean over k of (score LeRF(k) - score MoRF(k)) / 2 (pytorch-grad-cam ROADCombined)",
            "curves": curves,
            "prediction_kept": accuracy,
            "score": score_description(self.pascore_class),
            "images_without_value": head["n_empty"],
        }
        params = {
            "percentages": list(pcts),
            "orders": list(ROAD_ORDERS),
            "imputation": "noisy linear (8 neighbours, weights 1/6 edge, 1/12 diagonal), SciPy spsolve",
            "noise": float(self.params["noise"]),
            "pixels_removed": "int(H * W * k / 100) (Quantus's), at most H * W - 1; ties by pixel index",
            "map": "upsampled",
            "bootstrap_resamples": reps,
        }
        return self.result(ROAD, head, params, details, row_nanmean(head_values))

    def _summarize_insertion(self, cols: Columns, seed: int, reps: int) -> MeasureResult:
        steps = np.asarray(self.params["steps"], dtype=np.float64)
        curve = np.asarray(cols["insertion"], dtype=np.float64)
        auc = trapezoid_auc(curve, steps / 100)
        head = summarize_runs(auc, seed, reps)
        details: dict[str, Any] = {
            "headline": "trapezoid area under the insertion curve over the share inserted in [0, 1]",
            "curves": {
                "insertion": [
                    {"k": float(s), **summarize_runs(curve[:, :, j], seed, reps)} for j, s in enumerate(steps)
                ]
            },
            "score": score_description(self.pascore_class),
            "images_without_value": head["n_empty"],
        }
        start = self.params["insertion_start"]
        if start == "blur":
            how: dict[str, Any] = {
                "insertion_sigma": float(self.params["insertion_sigma"]),
                "reference_size": self.params["reference_size"],
            }
        else:
            how = {"mean_color": [float(c) for c in self.params["mean_color"]]}
        params: dict[str, Any] = {
            "steps": steps.tolist(),
            "insertion_start": start,
            **how,
            "order": "morf",
            "map": "upsampled",
            "ties": "pixel index",
            "bootstrap_resamples": reps,
        }
        return self.result(INSERTION, head, params, details, row_nanmean(auc))
