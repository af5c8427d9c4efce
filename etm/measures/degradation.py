"""(e) Reaction to salience-guided degradation.

``degradation.deletion`` (default): MoRF / LeRF deletion curves. The k% most (MoRF) or least (LeRF)
salient pixels of the clean upsampled map are replaced by a baseline image, k = 0, 10, ..., 100,
and the score of the clean image's target class is recorded (forward passes only). Ties in the map
are broken by pixel index (row-major, lower first) in both orders, so the orders are deterministic.
``round(k% * H * W)`` pixels are replaced at step k (all channels of a pixel together). A random
order (seeded per image, the same for every run) gives the reference curve. Areas are trapezoids
over k in [0, 1]. Headline: ``AUC(LeRF) - AUC(MoRF)``; higher = deleting what the map calls salient
hurts the score more than deleting what it calls irrelevant = a more faithful map.

``orders`` selects the curves (any non-empty subset of ``morf``, ``lerf``, ``random``; all three by
default): each costs one forward pass per step strictly between 0 and 100 %. Without both MoRF and
LeRF the headline has no value (None, with ``details.message``); the curves and areas computed are
still reported, so a MoRF-only run costs what a single-curve library's does.

Baselines: ``blur`` (default) is the image blurred with sigma ``baseline_sigma`` (10, scipy
boundary), which removes detail without adding out-of-distribution colours; ``mean`` fills with the
constant colour ``mean_color`` (default mid-grey 0.5, 0.5, 0.5 in RGB [0, 1]; pass the dataset's
mean colour there to get the contract's "dataset mean" option; it is a parameter rather than
estimated per batch so that a sharded job gives the same numbers).

``degradation.blur`` (paper): the paper's salience-guided variable blur, as the authors' released
``Measures/Degradation/main.py`` computes it (``etm.ops.paper``): the truncated 8-bit native map
upscaled bicubically by PIL, smoothed by SciPy in uint8, scaled with ``x / (x.max() / 10)``, rounded
to 0.1; each uint8 colour channel is blurred by SciPy with sigma ``(10 - v)**4 / 1000`` per level
``v``. Mode ``background`` blurs where the map is low, mode ``object`` blurs the salient region
(``255 - map``). Per mode: mean score before and after, the score drop, and SSIM (data range 255)
between the degraded image's upscaled 8-bit map and the clean one (the authors' ``ssim.py``
compares the upscaled maps). Headline: ``drop(object) - drop(background)`` per image (equal to
``score(background-blurred) - score(object-blurred)``); higher = the score depends more on the
salient region than on the background = a more faithful map.

Images whose clean map is empty have no salience order and are excluded (NaN) and counted; the
random-order curve is kept for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult, score_description
from etm.measures.entropy import INPUT_SIZE_NOTE
from etm.ops.blur import gaussian_blur
from etm.ops.maps import is_empty
from etm.ops.paper import (
    from_images8,
    paper_blur_levels,
    paper_blur_many,
    to_images8,
    to_uint8_truncated,
    upscale_bicubic,
)
from etm.ops.random import keyed_permutation, stream_id
from etm.ops.ssim import ssim
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs, trapezoid_auc

DELETION = "degradation.deletion"
BLUR = "degradation.blur"
ORDERS = ("morf", "lerf", "random")
MODES = ("background", "object")
RANDOM_STREAM = stream_id("degradation.deletion.random")
# The uint8 blurred batches held at once while the blur is shared between runs (one per run and mode).
_BLUR_GROUP_BYTES = 256 * 2**20


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def deletion_ranks(maps: torch.Tensor, seeds: torch.Tensor, orders: Sequence[str] = ORDERS) -> torch.Tensor:
    """Deletion rank of each pixel per order: long [len(orders), N, H*W] (default MoRF, LeRF, random).

    A pixel of rank r is replaced once more than r pixels are. Stable sorts break ties by pixel index.
    """
    flat = maps.flatten(1)
    make = {
        "morf": lambda: torch.argsort(flat, dim=1, descending=True, stable=True),
        "lerf": lambda: torch.argsort(flat, dim=1, stable=True),
        "random": lambda: keyed_permutation(seeds.to(flat.device), RANDOM_STREAM, flat.shape[1]),
    }
    perms = torch.stack([make[o]() for o in orders])
    ar = torch.arange(flat.shape[1], device=flat.device).expand_as(perms)
    return torch.empty_like(perms).scatter_(2, perms, ar)


def check_orders(orders: Any) -> list[str]:
    """The requested deletion orders in canonical order (MoRF, LeRF, random), duplicates dropped.

    Raises:
        BadInput: not a non-empty list of the allowed names.
    """
    if (
        not isinstance(orders, (list, tuple))
        or not orders
        or any(not isinstance(o, str) or o not in ORDERS for o in orders)
    ):
        raise BadInput(f"deletion orders must be a non-empty list drawn from {list(ORDERS)}, got {orders!r}")
    return [o for o in ORDERS if o in orders]


def deleted_counts(fractions: list[float], n_pixels: int) -> list[int]:
    """Pixels replaced at each fraction: round half up of ``f * n_pixels``."""
    return [int(np.floor(f * n_pixels + 0.5)) for f in fractions]


class DegradationMeasure(Measure):
    """Deletion curves (default) and the paper's salience-guided blur.

    Params: ``variants`` (which of the two to compute; both by default), ``steps`` (deletion
    percentages, default 0..100 by 10), ``orders`` (deletion curves: a non-empty subset of ``morf``,
    ``lerf``, ``random``; all three by default), ``baseline`` (``blur`` or ``mean``), ``baseline_sigma`` (10),
    ``mean_color`` (RGB in [0, 1], for ``mean``), ``chunk_size`` (images per deletion forward pass),
    ``chunk_pixels`` (and at most this many pixels per pass: 256 composites at 64x64, 20 at 224x224),
    ``smooth_sigma`` (5, the paper's map smoothing), ``reference_size`` (224), ``bootstrap_resamples``.

    Every length in pixels (``smooth_sigma``, the blur sigmas up to 10, ``baseline_sigma``) was set by
    the paper for 224-px inputs; like the contract's translation shift, it is scaled by
    ``min(H, W) / reference_size``, so a 64-px model is degraded as much, relative to its image, as a
    224-px one. At 224 px nothing changes; ``reference_size: null`` uses the sigmas as plain pixels.

    Columns: deletion: ``deletion_morf``, ``deletion_lerf``, ``deletion_random`` [N, K, S] (score
    per step; only the requested orders); blur: ``blur_before``, ``blur_after_background``, ``blur_after_object``,
    ``blur_ssim_background``, ``blur_ssim_object`` [N, K]; ``native_is_input_size`` [N]. NaN =
    excluded (empty clean map; for the SSIM also an empty degraded map).
    """

    name = "degradation"
    title = "Salience-guided degradation"
    about = (
        "Score drop when the most vs the least salient pixels are removed or blurred. Higher: the salient pixels "
        "really drive the decision."
    )
    variants = {DELETION: ("default", "higher"), BLUR: ("paper", "higher")}
    notes = {
        DELETION: "AUC(LeRF) - AUC(MoRF) of deletion curves",
        BLUR: "drop(object blurred) - drop(background blurred) (paper)",
    }
    curve_titles = {
        "morf": "MoRF: most salient deleted first",
        "lerf": "LeRF: least salient deleted first",
        "random": "random order",
    }

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        unknown = [v for v in p["variants"] if v not in self.variants]
        if unknown or not p["variants"]:
            raise BadInput(
                f"degradation variants must be a non-empty subset of {list(self.variants)}, got {p['variants']}"
            )
        steps = [float(s) for s in p["steps"]]
        if (
            len(steps) < 2
            or any(not 0 <= s <= 100 for s in steps)
            or any(b <= a for a, b in zip(steps, steps[1:], strict=False))
        ):
            raise BadInput(f"deletion steps must be >= 2 increasing percentages in [0, 100], got {steps}")
        if p["baseline"] not in ("blur", "mean"):
            raise BadInput(f"baseline must be 'blur' or 'mean', got {p['baseline']!r}")
        if len(p["mean_color"]) != 3 or any(not 0 <= c <= 1 for c in p["mean_color"]):
            raise BadInput(f"mean_color must be 3 values in [0, 1] (RGB), got {p['mean_color']}")
        if float(p["baseline_sigma"]) <= 0 or int(p["chunk_size"]) < 1 or int(p["chunk_pixels"]) < 1:
            raise BadInput("baseline_sigma must be > 0, chunk_size >= 1 and chunk_pixels >= 1")
        p["steps"] = steps
        p["orders"] = check_orders(p["orders"])

    def default_params(self) -> dict[str, Any]:
        return {
            "variants": [DELETION, BLUR],
            "steps": list(range(0, 101, 10)),
            "orders": list(ORDERS),
            "baseline": "blur",
            "baseline_sigma": 10.0,
            "mean_color": [0.5, 0.5, 0.5],
            "chunk_size": 256,
            # Large inputs in chunks of 256 run slower per image (ResNet-50 at 224 px on ONNX Runtime:
            # 82 ms at 216 images vs 62-68 ms at 8-32) and hold GBs of activations; this bound keeps a
            # chunk near 1 M pixels (20 composites at 224 px) and leaves 64-px inputs at 256.
            "chunk_pixels": 256 * 64 * 64,
            "smooth_sigma": 5.0,
            "reference_size": 224,
            "bootstrap_resamples": DEFAULT_RESAMPLES,
        }

    def _on(self, variant: str) -> bool:
        return variant in self.params["variants"]

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        steps = self.params["steps"]
        forward = 0
        if self._on(DELETION):
            forward = len(self.params["orders"]) * sum(1 for s in steps if 0 < s < 100) + (1 if 100 in steps else 0)
        return {"salience": 2 * n_runs if self._on(BLUR) else 0, "forward": n_runs * forward}

    # -- per image -------------------------------------------------------------------------------
    def scale(self, images: torch.Tensor) -> float:
        """Pixel lengths are the paper's at ``reference_size`` px, scaled to this input size."""
        ref = self.params["reference_size"]
        return 1.0 if ref is None else min(images.shape[-2:]) / float(ref)

    def baseline(self, images: torch.Tensor) -> torch.Tensor:
        """The deletion baseline of each image: [N, 3, H, W]."""
        if self.params["baseline"] == "blur":
            return gaussian_blur(images, float(self.params["baseline_sigma"]) * self.scale(images))
        color = torch.tensor(self.params["mean_color"], dtype=images.dtype, device=images.device)
        return color.view(1, 3, 1, 1).expand_as(images).clone()

    def per_image(self, ctx: BatchContext) -> Columns:
        n = len(ctx.keys)
        cols: Columns = {"native_is_input_size": np.full(n, any(r.native_is_input_size for r in ctx.clean))}
        if self._on(DELETION):
            cols.update(self._deletion(ctx))
        if self._on(BLUR):
            cols.update(self._blur(ctx))
        return cols

    def _deletion(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        _, _, h, w = ctx.images.shape
        orders: list[str] = self.params["orders"]
        fractions = [s / 100 for s in self.params["steps"]]
        counts = deleted_counts(fractions, h * w)
        mid = [i for i, m in enumerate(counts) if 0 < m < h * w]  # steps that need a composite
        base = self.baseline(ctx.images)
        chunk = max(1, min(int(self.params["chunk_size"]), int(self.params["chunk_pixels"]) // (h * w)))
        curves = np.full((len(orders), n, k, len(fractions)), np.nan)
        for r, clean in enumerate(ctx.clean):
            targets = clean.targets.to(ctx.device)
            ranks = deletion_ranks(clean.upsampled.to(ctx.device), ctx.image_seeds, orders)  # [O, N, P]
            for i, m in enumerate(counts):  # the shared ends of all curves
                if m == 0:
                    curves[:, :, r, i] = _np(ctx.clean_scores(r))
                elif m == h * w:
                    curves[:, :, r, i] = _np(ctx.scores(r, base, targets))
            # All (order, step, image) composites in flat order, forward passes in chunks. With all
            # three orders this is the layout (and so the batches, and the bits) of the version that
            # always computed them. A chunk is a few runs of consecutive images of one (order, step):
            # each run is written from slices of the batch, without gathering copies of the images.
            total = len(orders) * len(mid) * n
            flat = np.empty(total)
            for start in range(0, total, chunk):
                stop = min(total, start + chunk)
                composite = torch.empty(
                    (stop - start, *ctx.images.shape[1:]), dtype=ctx.images.dtype, device=ctx.device
                )
                pos = start
                while pos < stop:
                    block, i0 = divmod(pos, n)
                    i1 = min(n, i0 + stop - pos)
                    o, s = divmod(block, len(mid))
                    gone = (ranks[o, i0:i1] < counts[mid[s]]).view(-1, 1, h, w)
                    out = composite[pos - start : pos - start + i1 - i0]
                    torch.where(gone, base[i0:i1], ctx.images[i0:i1], out=out)
                    pos += i1 - i0
                img = torch.arange(start, stop, device=ctx.device) % n
                flat[start:stop] = _np(ctx.scores(r, composite, targets[img]))
            curves[:, :, r, mid] = flat.reshape(len(orders), len(mid), n).transpose(0, 2, 1)
            empty = is_empty(clean.upsampled).cpu().numpy()
            for i, o in enumerate(orders):
                if o != "random":
                    curves[i, empty, r, :] = np.nan  # no salience order without salience
        return {f"deletion_{o}": curves[i] for i, o in enumerate(orders)}

    def _blur(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        cols = {
            name: np.full((n, k), np.nan)
            for name in ("blur_before", *(f"blur_{what}_{m}" for what in ("after", "ssim") for m in MODES))
        }
        size = tuple(ctx.images.shape[-2:])
        scale = self.scale(ctx.images)
        smooth = float(self.params["smooth_sigma"]) * scale
        images8 = to_images8(ctx.images)  # the 8-bit image the authors' script blurs
        ups = [upscale_bicubic(to_uint8_truncated(clean.native), size) for clean in ctx.clean]
        # The runs' blurred images, a group of runs at a time: each (image, level) is blurred once for all the
        # runs and modes of a group (the same bits as one paper_blur per run and mode, a fraction of the work).
        per_run = max(1, _BLUR_GROUP_BYTES // max(1, len(MODES) * images8.numel()))
        blurred: dict[tuple[int, str], torch.Tensor] = {}
        for r, clean in enumerate(ctx.clean):
            if r % per_run == 0:
                group = [(g, mode) for g in range(r, min(len(ctx.clean), r + per_run)) for mode in MODES]
                levels = [paper_blur_levels(ups[g], mode, smooth) for g, mode in group]
                blurred = dict(zip(group, paper_blur_many(images8, levels, scale), strict=True))
            empty = is_empty(clean.native).cpu().numpy()
            up8 = ups[r]
            cols["blur_before"][:, r] = _np(ctx.clean_scores(r))
            for mode in MODES:
                degraded = from_images8(blurred.pop((r, mode)), ctx.images)
                res = ctx.salience_fn(r, degraded)
                after = _np(ctx.score_of(r, res.logits, clean.targets))
                sim = ssim(upscale_bicubic(to_uint8_truncated(res.native), size), up8, 255.0).numpy()
                after[empty] = np.nan
                sim[empty | is_empty(res.native).cpu().numpy()] = np.nan
                cols[f"blur_after_{mode}"][:, r] = after
                cols[f"blur_ssim_{mode}"][:, r] = sim
        return cols

    # -- summary ---------------------------------------------------------------------------------
    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        notes = [INPUT_SIZE_NOTE] if bool(np.any(cols["native_is_input_size"])) else []
        out = []
        if self._on(DELETION):
            out.append(self._summarize_deletion(cols, rng_seed, reps))
        if self._on(BLUR):
            out.append(self._summarize_blur(cols, rng_seed, reps, notes))
        return out

    def _summarize_deletion(self, cols: Columns, seed: int, reps: int) -> MeasureResult:
        p = self.params
        orders: list[str] = p["orders"]
        steps = np.asarray(p["steps"], dtype=np.float64)
        x = steps / 100
        curves, aucs, auc_values = {}, {}, {}
        for o in orders:
            v = np.asarray(cols[f"deletion_{o}"], dtype=np.float64)
            curves[o] = [{"k": float(s), **summarize_runs(v[:, :, i], seed, reps)} for i, s in enumerate(steps)]
            auc_values[o] = trapezoid_auc(v, x)  # [N, K]
            aucs[o] = summarize_runs(auc_values[o], seed, reps)
        parameters = {
            "steps": steps.tolist(),
            "orders": list(orders),
            "baseline": p["baseline"],
            **(
                {"baseline_sigma": float(p["baseline_sigma"]), "reference_size": p["reference_size"]}
                if p["baseline"] == "blur"
                else {"mean_color": [float(c) for c in p["mean_color"]]}
            ),
            "map": "upsampled",
            "ties": "pixel index",
            "bootstrap_resamples": reps,
        }
        details: dict[str, Any] = {
            "headline": "AUC(LeRF) - AUC(MoRF), trapezoid over k in [0, 1]",
            "curves": curves,
            "auc": aucs,
        }
        if "random" in auc_values and "morf" in auc_values:
            details["gap_random_minus_morf"] = summarize_runs(auc_values["random"] - auc_values["morf"], seed, reps)
        details["score"] = score_description(self.pascore_class)
        if "morf" not in auc_values or "lerf" not in auc_values:
            # A parameter choice, not a failure: the curves asked for are reported, the headline is not.
            details["message"] = (
                f"the headline AUC(LeRF) - AUC(MoRF) needs both 'morf' and 'lerf' in orders; computed {orders}"
            )
            salient = [aucs[o] for o in ("morf", "lerf") if o in aucs]
            return self.unavailable(DELETION, parameters, details, salient[0]["n_empty"] if salient else 0)
        gap_values = auc_values["lerf"] - auc_values["morf"]
        gap = summarize_runs(gap_values, seed, reps)
        return self.result(DELETION, gap, parameters, per_image=row_nanmean(gap_values), details=details)

    def _summarize_blur(self, cols: Columns, seed: int, reps: int, notes: list[str]) -> MeasureResult:
        before = np.asarray(cols["blur_before"], dtype=np.float64)
        per_mode: dict[str, Any] = {}
        for mode in MODES:
            after = np.asarray(cols[f"blur_after_{mode}"], dtype=np.float64)
            valid_before = np.where(np.isnan(after), np.nan, before)  # same images as "after"
            per_mode[mode] = {
                "score_before": summarize_runs(valid_before, seed, reps),
                "score_after": summarize_runs(after, seed, reps),
                "score_drop": summarize_runs(valid_before - after, seed, reps),
                "ssim": summarize_runs(np.asarray(cols[f"blur_ssim_{mode}"], dtype=np.float64), seed, reps),
            }
        head_values = np.asarray(cols["blur_after_background"], dtype=np.float64) - np.asarray(
            cols["blur_after_object"], dtype=np.float64
        )
        head = summarize_runs(head_values, seed, reps)
        details: dict[str, Any] = {
            "headline": "drop(object) - drop(background) = score(background blurred) - score(object blurred)",
            "modes": per_mode,
            "levels": "truncated 8-bit native map, PIL bicubic upscale, SciPy uint8 smoothing (sigma 5), "
            "x / (x.max() / 10), rounded to 0.1; sigma = (10 - v)**4 / 1000 on each uint8 channel",
            "score": score_description(self.pascore_class),
        }
        if notes:
            details["notes"] = notes
        return self.result(
            BLUR,
            head,
            {
                "smooth_sigma": float(self.params["smooth_sigma"]),
                "reference_size": self.params["reference_size"],
                "max_sigma": 10.0,
                "ssim_maps": "8-bit upscaled (PIL bicubic of the truncated native map)",
                "data_range": 255,
                "bootstrap_resamples": reps,
            },
            details,
            row_nanmean(head_values),
        )
