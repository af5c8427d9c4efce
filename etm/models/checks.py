"""Metadata mistakes caught, not scored: warnings when a model's metadata is likely wrong.

Wrong metadata does not fail, it scores: mean/std on the 0-255 scale gave a real face classifier
accuracy 0.5 with AUROC 0.99, and ``sigmoid`` on a 2-logit softmax model gave AUROC 0.0, without a
word. Two kinds of check, each naming the likely fix (rules and thresholds: docs/MODELS.md,
"Metadata warnings"):

- at load (upload inspection, ``etm``): the metadata itself, and the outputs on the probe batch of
  blank images (``load_warnings``);
- in the report, from the job's numbers: inputs after normalisation, raw outputs against the chosen
  activation, chance-level accuracy with a far-from-0.5 AUROC (``job_warnings``).

A warning is ``{"code", "message", "fix"}`` (the report adds ``candidate`` and ``run``); codes are
stable, messages are for people.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from etm.models.metadata import ModelMetadata

Warning_ = dict[str, Any]

# -- thresholds (documented in docs/MODELS.md; change both together) --------------------------------
SCALE_LIMIT = 1.0  # mean or std above this: the 0-255 scale (images reach the model in [0, 1])
PROB_TOL = 1e-3  # outputs in [-tol, 1 + tol] with rows summing to 1 +- tol read as probabilities
PROB_SHARE = 0.99  # share of images whose outputs look like probabilities to call the outputs probabilities
INPUT_ABS_LIMIT = 5.0  # mean |x| after normalisation above this: inputs far outside the usual range
INPUT_SPREAD_LIMIT = 0.05  # mean per-image std of x after normalisation below this: inputs nearly constant
CHANCE_BAND = 0.1  # balanced accuracy within 1/C +- this counts as chance level
AUROC_FAR = 0.25  # ... while |AUROC - 0.5| >= this: the scores rank, the decisions do not
DISAGREE_SHARE = 0.05  # share of images where the most probable class is not the predicted one
MIN_IMAGES = 20  # fewer labelled images than this: no accuracy-based warning (too noisy)


def _w(code: str, message: str, fix: str) -> Warning_:
    return {"code": code, "message": message, "fix": fix}


def metadata_warnings(meta: ModelMetadata, num_outputs: int) -> list[Warning_]:
    """What the metadata alone says is likely wrong."""
    out = []
    big = [v for v in (*meta.mean, *meta.std) if v > SCALE_LIMIT]
    if big:
        out.append(
            _w(
                "mean_std_0_255",
                f"mean {list(meta.mean)} / std {list(meta.std)} look like the 0-255 scale, but images reach the "
                "model as RGB in [0, 1], so every input is nearly constant after normalisation",
                "give mean and std on the [0, 1] scale: divide them by 255 "
                f"(mean {[round(v / 255, 4) for v in meta.mean]}, std {[round(v / 255, 4) for v in meta.std]})",
            )
        )
    if meta.score_activation == "sigmoid" and num_outputs >= 2:
        out.append(
            _w(
                "sigmoid_on_several_outputs",
                f"score_activation 'sigmoid' reads output 0 of this {num_outputs}-output model as the logit of "
                "class 1 and ignores the others; on a softmax model that inverts the scores (AUROC near 0)",
                "use score_activation 'softmax' for a softmax head, 'sigmoid_per_logit' for one sigmoid per "
                "class, or 'none' when the outputs are probabilities already",
            )
        )
    return out


def probability_rows(outputs: torch.Tensor) -> torch.Tensor:
    """[N] bool: the row's outputs are in [0, 1] and (C >= 2) sum to 1, within ``PROB_TOL``."""
    x = outputs.detach().double()
    ok = ((x >= -PROB_TOL) & (x <= 1 + PROB_TOL)).all(dim=1)
    if x.shape[1] >= 2:
        ok &= (x.sum(dim=1) - 1).abs() <= PROB_TOL
    return ok


def output_warnings(meta: ModelMetadata, outputs: torch.Tensor, share: float | None = None) -> list[Warning_]:
    """What the raw outputs say about ``score_activation``; ``share``: the share of images whose rows look
    like probabilities (computed from ``outputs`` when None)."""
    c = outputs.shape[1]
    if share is None:
        share = float(probability_rows(outputs).double().mean()) if len(outputs) else 0.0
    act = meta.score_activation
    if act == "none":
        if share < PROB_SHARE:
            want = "softmax" if c >= 2 else "sigmoid"
            what = "in [0, 1] and summing to 1" if c >= 2 else "in [0, 1]"
            return [
                _w(
                    "outputs_not_probabilities",
                    f"score_activation 'none' uses the outputs as probabilities, but only {share:.0%} of the rows "
                    f"are {what}",
                    f"use score_activation '{want}' (the outputs look like logits)",
                )
            ]
        return []
    if c >= 2 and share >= PROB_SHARE:
        return [
            _w(
                "outputs_are_probabilities",
                f"the outputs are already probabilities (in [0, 1], each row summing to 1, on {share:.0%} of the "
                f"rows), and score_activation '{act}' applies another activation on top: scores are squeezed "
                "together and no longer probabilities",
                "set score_activation 'none' (the graph ends in a softmax)",
            )
        ]
    return []


def probe_images(n: int, h: int, w: int) -> torch.Tensor:
    """The probe batch: blank images from black to white (two different rows tell probabilities from logits
    that happen to look like them)."""
    levels = torch.linspace(0.0, 1.0, n) if n > 1 else torch.zeros(1)
    return levels.view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()


def load_warnings(meta: ModelMetadata, num_outputs: int, outputs: torch.Tensor | None) -> list[Warning_]:
    """Warnings at load: the metadata, and the probe batch's outputs (None: the probe gave no finite output)."""
    out = metadata_warnings(meta, num_outputs)
    if outputs is not None and torch.isfinite(outputs).all():
        out += output_warnings(meta, outputs)
    return out


# -- from the job's numbers ---------------------------------------------------------------------------


def input_columns(pre: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image, from the normalised input [N, 3, H, W]: mean |x| and the std of x."""
    flat = pre.detach().double().flatten(1)
    return {
        "input_abs_mean": flat.abs().mean(dim=1).cpu().numpy(),
        "input_std": flat.std(dim=1, correction=0).cpu().numpy(),
    }


def output_columns(outputs: torch.Tensor, probs: torch.Tensor, predicted: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image, from the raw outputs: whether they look like probabilities, and whether the most probable
    class under the activation is the predicted class."""
    top = probs.detach().argmax(dim=1) if probs.shape[1] > 1 else (probs[:, 0] > 0.5).long()
    return {
        "outputs_probability": probability_rows(outputs).cpu().numpy(),
        "activation_agrees": (top.cpu() == predicted.detach().cpu()).numpy(),
    }


def input_warnings(abs_mean: float, spread: float) -> list[Warning_]:
    """Inputs after normalisation, averaged over the job's images."""
    out = []
    if abs_mean > INPUT_ABS_LIMIT:
        out.append(
            _w(
                "inputs_out_of_range",
                f"after normalisation the inputs have mean |x| = {abs_mean:.3g} (usual: about 1; warned above "
                f"{INPUT_ABS_LIMIT:g}): std is likely far too small",
                "check mean and std: they apply to RGB in [0, 1] (a model trained on 0-255 inputs needs "
                "mean 0 and std 1/255 = 0.003922, not a tiny std on [0, 1] data)",
            )
        )
    if spread < INPUT_SPREAD_LIMIT:
        out.append(
            _w(
                "inputs_nearly_constant",
                f"after normalisation each image varies by only {spread:.3g} (mean per-image std; usual: about 1; "
                f"warned below {INPUT_SPREAD_LIMIT:g}): std is likely far too large",
                "give mean and std on the [0, 1] scale (if they are on the 0-255 scale, divide them by 255)",
            )
        )
    return out


def accuracy_warnings(balanced: float | None, auroc: float | None, n: int, n_classes: int) -> list[Warning_]:
    """Chance-level decisions from scores that rank well (or inverted): the metadata reads the outputs wrongly."""
    if balanced is None or auroc is None or n < MIN_IMAGES or not (np.isfinite(balanced) and np.isfinite(auroc)):
        return []
    chance = 1.0 / n_classes
    if abs(balanced - chance) > CHANCE_BAND or abs(auroc - 0.5) < AUROC_FAR:
        return []
    if auroc < 0.5:
        why = "the scores rank the classes the wrong way round"
        fix = ("check class_names order and positive_class (the class order of the model's outputs), and "
               "score_activation ('sigmoid' on a several-output model reads the wrong output)")
    else:
        why = "the scores rank the images well but the decisions do not follow them"
        fix = ("check the normalisation (mean/std on the [0, 1] scale, channel_order), class_names order and "
               "score_activation")
    return [
        _w(
            "chance_accuracy_far_auroc",
            f"balanced accuracy {balanced:.3f} is at chance level ({chance:.2f}) while AUROC is {auroc:.3f}: {why}",
            fix,
        )
    ]


def activation_warnings(meta: ModelMetadata, n_outputs: int, prob_share: float, agree_share: float) -> list[Warning_]:
    """The raw outputs over the job's images against ``score_activation``."""
    out = output_warnings(meta, torch.zeros(0, n_outputs), share=prob_share)
    if 1 - agree_share > DISAGREE_SHARE:
        out.append(
            _w(
                "activation_disagrees_with_predictions",
                f"on {1 - agree_share:.0%} of the images the most probable class under score_activation "
                f"'{meta.score_activation}' is not the predicted class (the largest output)",
                "check score_activation: 'sigmoid' is for one-output models; use 'softmax' for a softmax head",
            )
        )
    return out


def job_warnings(
    meta: ModelMetadata,
    n_outputs: int,
    cols: dict[str, np.ndarray],
    run: int,
    accuracy: Sequence[float | None] | None,
    n_labelled: int,
) -> list[Warning_]:
    """The report's warnings for one run from its diagnostic columns (``[N, K]``, see ``input_columns`` and
    ``output_columns``) and, when the job measured it, its (balanced accuracy, AUROC)."""
    if not len(cols.get("input_abs_mean", ())):
        return []
    out = input_warnings(float(np.mean(cols["input_abs_mean"][:, run])), float(np.mean(cols["input_std"][:, run])))
    out += activation_warnings(
        meta, n_outputs, float(np.mean(cols["outputs_probability"][:, run])),
        float(np.mean(cols["activation_agrees"][:, run])),
    )
    if accuracy is not None:
        out += accuracy_warnings(accuracy[0], accuracy[1], n_labelled, 2 if n_outputs == 1 else n_outputs)
    return out
