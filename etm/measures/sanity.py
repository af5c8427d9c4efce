"""Can the maps be trusted? The randomisation sanity checks (Adebayo et al. 2018; Sixt et al. 2020; Hedström et
al. 2023), as Quantus 0.6 defines them.

Every variant compares the clean, input-size (``upsampled``) map of the job's method with maps of the same
images computed on a copy of the model whose weights were re-initialised (``etm.models.randomization``, seeded,
in memory) or for another class:

- ``sanity.mprt`` (Quantus ``MPRT``, cascading ``top_down``): layers are re-initialised one more per step from the
  output layer towards the input; the headline is the similarity (Spearman's rank correlation, Quantus's default
  ``similarity_func``) between the clean map and the map of the fully randomised model (``return_last_correlation``);
  ``details["curves"]["mprt"]`` is the similarity after each step with bootstrap CIs (step 0: the model as
  loaded). Lower = the maps depend on the weights. The maps explain the clean pass's target class, as Quantus
  explains the given ``y_batch`` on every randomised model.
- ``sanity.mprt.independent`` (Quantus ``layer_order="independent"``): one layer re-initialised at a time; the
  headline is the mean over layers (``return_average_correlation``), the curve per layer. Costs one more map per
  layer, so it runs only with ``independent: 1``.
- ``sanity.emprt`` (Quantus ``EfficientMPRT``): the relative rise in complexity ``(H(e') - H(e)) / H(e)`` from the
  clean map ``e`` to the fully randomised model's ``e'``, ``H`` the discrete entropy of a 100-bin histogram of the
  raw map (Quantus's defaults: no normalisation, no abs). Higher = the maps depend on the weights.
- ``sanity.random_logit`` (Quantus ``RandomLogit``): the similarity (SSIM of the flattened maps, Quantus's
  default) between the map of the target class and the map of another class, drawn uniformly among the other
  classes per image (keyed by the image seed); with a 2-class detector it is always the other class. Lower = the
  maps are class-specific.

Convention (tested against Quantus in tests/etm/test_quantus_sanity.py): maps are the method's input-size maps,
already non-negative, so Quantus's ``abs`` changes nothing; Quantus divides a batch of maps by the batch's largest
value (``normalise_by_max`` over every axis) before comparing them, which makes an image's value depend on its
batch; here each map is divided by its own maximum for SSIM, which equals Quantus called one image at a time, and
not at all for the scale-free similarities (Spearman, Pearson), which equals Quantus with ``normalise=False``: in
exact arithmetic the division changes no rank, in float32 it can round distinct values into ties. An empty
clean map gives NaN, counted in ``n_empty``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.ops.similarity import SIMILARITIES, discrete_entropy
from etm.params import Param
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs

MPRT, INDEPENDENT, EMPRT, RANDOM_LOGIT = "sanity.mprt", "sanity.mprt.independent", "sanity.emprt", "sanity.random_logit"
QUANTUS_SEED = 42  # Quantus 0.6's default ``seed`` for MPRT, EfficientMPRT and RandomLogit
# The verdict (docs/MEASURES.md, "Can the maps be trusted?"): maps fail when the upper bound of the 95% CI of
# the mean sanity.mprt similarity after full randomisation lies above this.
MPRT_THRESHOLD = 0.5


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


SCALE_FREE = {"spearman", "pearson"}  # similarities a positive factor does not change


def _by_own_max(maps: np.ndarray, similarity: str = "ssim") -> np.ndarray:
    """Each map divided by its largest absolute value (an all-zero map stays as it is), float32 like the maps.
    Not for a scale-free similarity: dividing in float32 can round distinct values into ties and move ranks."""
    flat = maps.reshape(len(maps), -1)
    if similarity in SCALE_FREE:
        return flat
    top = np.abs(flat).max(axis=1, keepdims=True)
    return np.where(top > 0, flat / np.where(top > 0, top, 1), flat).astype(np.float32)


class SanityMeasure(Measure):
    """The randomisation sanity checks (see the module docstring).

    Params: ``seed`` (the randomisation seed, Quantus's 42 by default: layer weights are drawn from a generator
    seeded with ``seed + 1``), ``similarity`` (MPRT's: ``spearman``, ``pearson`` or ``ssim``),
    ``random_logit_similarity`` (``ssim`` by default), ``independent`` (1: also ``sanity.mprt.independent``),
    ``bootstrap_resamples``.
    """

    name = "sanity"
    title = "Sanity checks (model randomisation)"
    about = (
        "Do the maps depend on the model's weights and on the class explained? MPRT: similarity between the map and "
        "the map after re-initialising the layers, output layer first (lower = passes). Random logit: similarity "
        "with the map of another class (lower = class-specific)."
    )
    variants = {
        MPRT: ("extra", "lower"),
        INDEPENDENT: ("extra", "lower"),
        EMPRT: ("extra", "higher"),
        RANDOM_LOGIT: ("extra", "lower"),
    }
    notes = {
        MPRT: "Spearman similarity of the map to the map of the fully randomised model (cascading, Quantus MPRT)",
        INDEPENDENT: "mean similarity over layers, one layer randomised at a time (Quantus MPRT, independent)",
        EMPRT: "relative rise of the map's histogram entropy after full randomisation (Quantus EfficientMPRT)",
        RANDOM_LOGIT: "SSIM of the map to the map of another class (Quantus RandomLogit; 2 classes: the other one)",
    }
    param_types = {
        "seed": Param(QUANTUS_SEED, int, 0, 2**31 - 2),
        "similarity": Param("spearman", str, choices=tuple(SIMILARITIES)),
        "random_logit_similarity": Param("ssim", str, choices=tuple(SIMILARITIES)),
        "independent": Param(0, int, 0, 1),
        "n_bins": Param(100, int, 2, 10_000),
    }
    curve_titles = {"mprt": "MPRT: similarity per randomised layer (cascading, output first)",
                    "mprt_independent": "MPRT: similarity per layer (independent)"}
    opt_in = True

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "seed": QUANTUS_SEED, "similarity": "spearman",
                "random_logit_similarity": "ssim", "independent": 0, "n_bins": 100}

    # Per run, its number of randomisable layers L (set by the plan, ``etm.evaluation.make_measures``).
    layer_counts: list[int] | None = None

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        """Per run: L salience passes for the cascade (eMPRT reuses its last), L more with ``independent``, one for
        random logit."""
        counts = self.layer_counts or [1] * n_runs
        per_layer = 2 if self.params["independent"] else 1
        return {"salience": sum(per_layer * n + 1 for n in counts), "forward": 0}

    # -- per image -------------------------------------------------------------------------------
    def per_image(self, ctx: BatchContext) -> Columns:
        if ctx.layers_fn is None or ctx.explain_fn is None:
            raise BadInput("the sanity measures need model randomisation, which this evaluation does not offer")
        n, k = len(ctx.keys), ctx.n_runs
        seed = int(self.params["seed"])
        sim_name, rl_name = self.params["similarity"], self.params["random_logit_similarity"]
        sim, rl_sim = SIMILARITIES[sim_name], SIMILARITIES[rl_name]
        names = [list(reversed(ctx.layers_fn(r))) for r in range(k)]  # top-down: output layer first
        width = max(len(x) for x in names)
        cols: Columns = {
            "mprt": np.full((n, k, width + 1), np.nan),
            "mprt_last": np.full((n, k), np.nan),
            "emprt": np.full((n, k), np.nan),
            "random_logit": np.full((n, k), np.nan),
            "n_layers": np.tile(np.array([len(x) for x in names], dtype=np.int64), (n, 1)),
            "layer_names": np.tile(np.array(names[0] + [""] * (width - len(names[0])), dtype=str), (n, 1)),
        }
        if self.params["independent"]:
            cols["mprt_independent"] = np.full((n, k, width), np.nan)
        for r in range(k):
            clean = ctx.clean[r]
            targets = clean.targets
            a0 = _np(clean.upsampled)
            empty = ~(a0.reshape(n, -1) > 0).any(axis=1)
            a0n, a0rl = _by_own_max(a0, sim_name), _by_own_max(a0, rl_name)
            cols["mprt"][:, r, 0] = sim(a0n, a0n)
            last = a0
            for step in range(1, len(names[r]) + 1):
                last = _np(ctx.explain_fn(r, ctx.images, targets, tuple(names[r][:step]), seed).upsampled)
                cols["mprt"][:, r, step] = sim(a0n, _by_own_max(last, sim_name))
            cols["mprt_last"][:, r] = cols["mprt"][:, r, len(names[r])]
            h0 = discrete_entropy(a0, int(self.params["n_bins"]))
            h1 = discrete_entropy(last, int(self.params["n_bins"]))
            with np.errstate(invalid="ignore", divide="ignore"):
                cols["emprt"][:, r] = np.where(h0 > 0, (h1 - h0) / np.where(h0 > 0, h0, 1), np.nan)
            if self.params["independent"]:
                for j, layer in enumerate(names[r]):
                    a = _np(ctx.explain_fn(r, ctx.images, targets, (layer,), seed).upsampled)
                    cols["mprt_independent"][:, r, j] = sim(a0n, _by_own_max(a, sim_name))
            off = _other_classes(ctx, r, targets)
            a_off = _np(ctx.explain_fn(r, ctx.images, off, (), seed).upsampled)
            cols["random_logit"][:, r] = rl_sim(a0rl, _by_own_max(a_off, rl_name))
            for key in ("mprt", "mprt_independent"):
                if key in cols:
                    cols[key][empty, r] = np.nan
            for key in ("mprt_last", "emprt", "random_logit"):
                cols[key][empty, r] = np.nan
        return cols

    # -- summary ---------------------------------------------------------------------------------
    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        p = self.params
        names = [str(x) for x in np.asarray(cols["layer_names"])[0] if str(x)] if len(cols["layer_names"]) else []
        n_layers = [int(x) for x in np.asarray(cols["n_layers"])[0]] if len(cols["n_layers"]) else []
        base = {"seed": int(p["seed"]), "map": "upsampled", "bootstrap_resamples": reps}

        def norm(similarity: str) -> str:
            return "none (scale-free similarity)" if similarity in SCALE_FREE else "each map by its own max"

        layer_info = {"layers": names, "n_layers": n_layers, "order": "top_down (output layer first)"}
        out = []
        mprt = np.asarray(cols["mprt"], dtype=np.float64)
        curve = [
            {"level": i, "layer": names[i - 1] if i else "original", **summarize_runs(mprt[:, :, i], rng_seed, reps)}
            for i in range(mprt.shape[2])
        ]
        last = np.asarray(cols["mprt_last"], dtype=np.float64)
        s = summarize_runs(last, rng_seed, reps)
        verdict = mprt_verdict(s["value"], s["ci"])
        out.append(self.result(
            MPRT, s,
            {**base, "similarity": p["similarity"], "normalise": norm(p["similarity"]), "layer_order": "top_down"},
            {"headline": "similarity to the map of the fully randomised model (return_last_correlation)",
             "curves": {"mprt": curve}, **layer_info, "verdict": verdict}, per_image=row_nanmean(last),
        ))
        ip = {**base, "similarity": p["similarity"], "normalise": norm(p["similarity"]), "layer_order": "independent"}
        if "mprt_independent" in cols:
            ind = np.asarray(cols["mprt_independent"], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                mean = row_nanmean(ind)  # [N, K]: each image's mean over layers
            icurve = [{"level": i + 1, "layer": names[i], **summarize_runs(ind[:, :, i], rng_seed, reps)}
                      for i in range(ind.shape[2])]
            out.append(self.result(INDEPENDENT, summarize_runs(mean, rng_seed, reps), ip,
                                   {"headline": "mean over layers (return_average_correlation)",
                                    "curves": {"mprt_independent": icurve}, **layer_info},
                                   per_image=row_nanmean(mean)))
        else:
            out.append(self.unavailable(INDEPENDENT, ip, {"message": "not computed; set independent: 1 (one more "
                                                          "map per layer)"}))
        em = np.asarray(cols["emprt"], dtype=np.float64)
        out.append(self.result(
            EMPRT, summarize_runs(em, rng_seed, reps),
            {"seed": int(p["seed"]), "map": "upsampled", "normalise": "none", "n_bins": int(p["n_bins"]),
             "complexity": "discrete entropy (natural log)", "bootstrap_resamples": reps},
            {"headline": "(H(randomised) - H(original)) / H(original)", **layer_info}, per_image=row_nanmean(em),
        ))
        rl = np.asarray(cols["random_logit"], dtype=np.float64)
        out.append(self.result(
            RANDOM_LOGIT, summarize_runs(rl, rng_seed, reps),
            {**{k: v for k, v in base.items() if k != "seed"}, "similarity": p["random_logit_similarity"],
             "normalise": norm(p["random_logit_similarity"]),
             "off_class": "uniform among the other classes, per image seed (2 classes: the other class)"},
            {"headline": "similarity of the target-class map to another class's map"}, per_image=row_nanmean(rl),
        ))
        return out


def mprt_verdict(value: float | None, ci: tuple[float, float] | list[float] | None,
                 threshold: float = MPRT_THRESHOLD) -> dict[str, Any]:
    """The sanity verdict from ``sanity.mprt``'s summary: ``passed`` False when the CI's upper bound (or the value,
    without a CI) lies above ``threshold``; None when there is no value."""
    upper = ci[1] if ci is not None else value
    passed = None if upper is None else bool(upper <= threshold)
    rule = f"fails when the upper bound of the 95% CI of sanity.mprt exceeds {threshold:g}"
    return {"passed": passed, "threshold": threshold, "upper": upper, "rule": rule}


def salience_based_variants() -> set[str]:
    """The variants whose values come from salience maps (families with ``needs_salience``), but the sanity
    checks themselves: the measures a failed sanity check makes untrustworthy."""
    from etm.measures import MEASURES  # the registry imports this module

    return {v for name, cls in MEASURES.items() if cls.needs_salience and name != "sanity" for v in cls.variants}


def _other_classes(ctx: BatchContext, run: int, targets: torch.Tensor) -> torch.Tensor:
    """Per image a class other than its target, uniform among the others, drawn from the image's seed."""
    n_classes = int(ctx.probabilities_fn(run, ctx.clean[run].logits[:1]).shape[1])
    if n_classes < 2:
        raise BadInput("sanity.random_logit needs a model that tells at least 2 classes apart")
    t = targets.detach().cpu().long()
    if n_classes == 2:
        return (1 - t).to(targets.device)
    draws = []
    for seed, target in zip(ctx.image_seeds.tolist(), t.tolist(), strict=True):
        g = torch.Generator().manual_seed(int(seed) ^ 0x5A17)  # a stream of its own, not the noise measures'
        j = int(torch.randint(0, n_classes - 1, (1,), generator=g))
        draws.append(j if j < target else j + 1)
    return torch.tensor(draws, dtype=torch.long, device=targets.device)
