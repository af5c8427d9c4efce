"""(b) Reaction to out-of-set samples: salt-and-pepper noise (``oos.noise``, paper).

At each noise amount (fraction of image elements replaced, half white, half black, as
``skimage.util.random_noise(mode="s&p")``), each run computes salience on the noisy images and we
record, per image:

- ``score``: the probability of the *clean* image's target class on the noisy image (so the curve
  shows how much belief in the original decision survives the noise; the target re-decided on noise
  would hide a flipped decision), or the paper's PAScore under ``score: pascore``;
- ``entropy``: the spatial entropy of the noisy native map (as ``entropy.spatial``);
- ``ssim``: SSIM (data range 255) between the noisy image's 8-bit native map and the clean one
  (the authors' truncated 8-bit maps).

The noisy image is made as in the authors' ``noise-varying-intensities.py``: the 8-bit image as
``skimage`` sees it (``x * (1/255)``), the noise, then ``(noisy * 255).astype(uint8)``, which
truncates. That round trip lowers 24 of the 256 values by one, so amount 0 is a salience pass of its
own (its SSIM is close to, not exactly, 1). The noise of an image is a pure function of its seed and
the amount value (not its index, so adding an amount to the list leaves the others unchanged).

Summaries: per-amount means with CIs, and the area under each curve over the amounts (trapezoid,
divided by the amount range, so a flat curve at c has area c), computed per image and run, then
averaged. Headline: the SSIM area (higher = salience more consistent under noise).

Empty maps (no positive salience) are excluded and counted, as everywhere: an empty clean map
excludes the image from the SSIM curve; an empty noisy map excludes that amount's entropy and SSIM,
and so the image's area for that run. Heavy noise can empty maps, so read the per-amount
``n_empty`` next to the areas.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult, score_description
from etm.measures.entropy import INPUT_SIZE_NOTE, spatial_entropy
from etm.ops.maps import is_empty
from etm.ops.noise import salt_and_pepper
from etm.ops.paper import from_images8, quantise_like_skimage, skimage_float, to_images8, to_uint8_truncated
from etm.ops.random import stream_id
from etm.ops.ssim import ssim
from etm.stats import DEFAULT_RESAMPLES, row_nanmean, summarize_runs, trapezoid_auc

PAPER_AMOUNTS = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 1.0)
CURVES = ("score", "entropy", "ssim")


def noise_stream(amount: float) -> int:
    """The random stream of the noise at ``amount`` (keyed by value, see the module doc)."""
    return stream_id("oos.noise", f"{float(amount):.9g}")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()



class NoiseMeasure(Measure):
    """Score, entropy and map SSIM under salt-and-pepper noise of increasing amount.

    Params: ``amounts`` (increasing, in [0, 1]; the paper's eight by default), ``salt_vs_pepper``
    (0.5), ``bootstrap_resamples`` (the engine passes the job's value).

    Columns: ``score``, ``entropy``, ``ssim`` [N, K, L] float64 (L amounts; NaN = excluded);
    ``native_is_input_size`` [N] bool.
    """

    name = "noise"
    title = "Reaction to noise"
    about = (
        "How salience holds up as salt-and-pepper noise is added (area under the mean-SSIM curve). Higher: the "
        "maps degrade more gracefully."
    )
    variants = {"oos.noise": ("paper", "higher")}
    notes = {"oos.noise": "area under the SSIM curve (paper)"}
    curve_titles = {"score": "target-class score", "entropy": "salience entropy", "ssim": "SSIM to the clean map"}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        amounts = [float(a) for a in self.params["amounts"]]
        if (
            len(amounts) < 2
            or any(not 0.0 <= a <= 1.0 for a in amounts)
            or any(b <= a for a, b in zip(amounts, amounts[1:], strict=False))
        ):
            raise BadInput(f"noise amounts must be >= 2 strictly increasing values in [0, 1], got {amounts}")
        if not 0.0 <= float(self.params["salt_vs_pepper"]) <= 1.0:
            raise BadInput(f"salt_vs_pepper must be in [0, 1], got {self.params['salt_vs_pepper']}")
        self.params["amounts"] = amounts

    def default_params(self) -> dict[str, Any]:
        return {"amounts": list(PAPER_AMOUNTS), "salt_vs_pepper": 0.5, "bootstrap_resamples": DEFAULT_RESAMPLES}

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        # Amount 0 is a pass too: the authors' 8-bit round trip changes the image (see per_image).
        return {"salience": n_runs * len(self.params["amounts"]), "forward": 0}

    def per_image(self, ctx: BatchContext) -> Columns:
        n, k = len(ctx.keys), ctx.n_runs
        amounts = self.params["amounts"]
        out = {c: np.full((n, k, len(amounts)), np.nan) for c in CURVES}
        clean8 = [to_uint8_truncated(r.native) for r in ctx.clean]
        clean_empty = [is_empty(r.native).cpu().numpy() for r in ctx.clean]
        # The authors' pipeline: the 8-bit image as skimage sees it (x * 1/255), the noise, then
        # (noisy * 255).astype(uint8), truncating, so even amount 0 changes some pixels by one.
        base = skimage_float(to_images8(ctx.images))
        # Amounts outside, runs inside: each noisy batch is made once and shared by all runs.
        for j, amount in enumerate(amounts):
            noisy = base
            if amount > 0:
                noisy = salt_and_pepper(
                    base, amount, ctx.image_seeds, noise_stream(amount), float(self.params["salt_vs_pepper"])
                )
            noisy_images = from_images8(quantise_like_skimage(noisy), ctx.images)
            for r, clean in enumerate(ctx.clean):
                res = ctx.salience_fn(r, noisy_images)
                score = ctx.score_of(r, res.logits, clean.targets)
                sim = ssim(to_uint8_truncated(res.native), clean8[r], 255.0).numpy()
                empty = is_empty(res.native).cpu().numpy()
                sim[empty | clean_empty[r]] = np.nan
                out["score"][:, r, j] = _np(score)
                out["entropy"][:, r, j] = spatial_entropy(res.native).numpy()  # NaN for empty maps
                out["ssim"][:, r, j] = sim
        out["native_is_input_size"] = np.full(n, any(r.native_is_input_size for r in ctx.clean))
        return out

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        amounts = np.asarray(self.params["amounts"], dtype=np.float64)
        curves: dict[str, list[dict[str, Any]]] = {}
        areas: dict[str, dict[str, Any]] = {}
        for c in CURVES:
            v = np.asarray(cols[c], dtype=np.float64)
            curves[c] = [
                {"amount": float(a), **summarize_runs(v[:, :, j], rng_seed, reps)} for j, a in enumerate(amounts)
            ]
            areas[c] = summarize_runs(trapezoid_auc(v, amounts), rng_seed, reps)
        head = areas["ssim"]
        details: dict[str, Any] = {
            "headline": "area under the mean-SSIM curve over the amounts (per image, then averaged)",
            "curves": curves,
            "areas": areas,
            "score": f"{score_description(self.pascore_class)}, on the noisy image",
            "empty_maps_per_amount": [
                int(np.isnan(np.asarray(cols["entropy"])[:, :, j]).sum()) for j in range(len(amounts))
            ],
        }
        if bool(np.any(cols["native_is_input_size"])):
            details["note"] = INPUT_SIZE_NOTE
        return [
            self.result(
                "oos.noise",
                head,
                {
                    "amounts": amounts.tolist(),
                    "salt_vs_pepper": float(self.params["salt_vs_pepper"]),
                    "map": "8-bit native",
                    "map_8bit": "truncated (the authors' to_pil_image)",
                    "image_8bit": "(random_noise(x / 255) * 255).astype(uint8), truncated, at every amount",
                    "data_range": 255,
                    "bootstrap_resamples": reps,
                },
                details,
                row_nanmean(trapezoid_auc(np.asarray(cols["ssim"], dtype=np.float64), amounts)),
            )
        ]
