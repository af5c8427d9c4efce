"""Accuracy, balanced accuracy and AUROC on labelled images (beyond the paper).

So that "equally accurate" is measured, not assumed. Images with label -1 (unknown) are left out.
For a family of K runs each statistic is computed per run and averaged over the runs; its CI
resamples images (the same resample for all runs) and recomputes that average.

- accuracy: share of images whose predicted (argmax) class is the true class.
- balanced accuracy: mean over the true classes present of the per-class recall.
- AUROC: rank-based (Mann-Whitney, ties 1/2) for "true class == positive class" vs the rest, scored
  by the model's probability of the positive class.

The same three are reported for the out-of-set dataset (``accuracy.ood*``) when it has labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.stats import DEFAULT_RESAMPLES, as_float, auroc_weighted, bootstrap_statistic

Statistic = Callable[[np.ndarray], np.ndarray]


def _accuracy_stat(correct: np.ndarray) -> Statistic:
    """Weighted accuracy of one run's correct [n] (0/1)."""
    return lambda w: (w * correct).sum(axis=1) / w.sum(axis=1)


def _balanced_stat(correct: np.ndarray, labels: np.ndarray) -> Statistic:
    """Weighted balanced accuracy: mean recall over the classes present in the (re)sample."""
    classes = np.unique(labels)

    def stat(w: np.ndarray) -> np.ndarray:
        recalls = []
        for c in classes:
            is_c = labels == c
            total = (w * is_c).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(np.where(total > 0, (w * (correct * is_c)).sum(axis=1) / total, np.nan))
        r = np.stack(recalls, axis=1)
        ok = np.isfinite(r)
        return np.where(ok, r, 0.0).sum(axis=1) / ok.sum(axis=1)  # every row has >= 1 class

    return stat


def _auroc_stat(scores: np.ndarray, positive: np.ndarray) -> Statistic:
    return lambda w: auroc_weighted(scores, positive, w)


def _family(stats: list[Statistic]) -> Statistic:
    """Average of per-run statistics (NaN if any run's is NaN, e.g. no positives in a resample)."""
    return lambda w: np.mean(np.stack([s(w) for s in stats], axis=1), axis=1)


class AccuracyMeasure(Measure):
    """Accuracy, balanced accuracy and AUROC with bootstrap CIs, in-set and out-of-set.

    Attributes:
        positive_index: the model class whose probability scores the AUROC. The engine sets it from
            ``model.metadata.resolved(...).positive_index`` before ``per_image``; None (default) or
            the ``positive_index`` param otherwise, else the last class.

    Params: ``bootstrap_resamples`` (the engine passes the job's value), ``positive_index``.

    Columns (in-set and out-of-set alike): ``label`` [N] (-1 unknown); ``predicted`` [N, K];
    ``score`` [N, K] probability of the positive class; ``positive_index`` [N].
    """

    name = "accuracy"
    title = "Accuracy"
    about = "Classification performance, for context."
    variants = {
        "accuracy": ("extra", "higher"),
        "accuracy.balanced": ("extra", "higher"),
        "accuracy.auroc": ("extra", "higher"),
        "accuracy.ood": ("extra", "higher"),
        "accuracy.ood.balanced": ("extra", "higher"),
        "accuracy.ood.auroc": ("extra", "higher"),
    }
    needs_oos = True
    needs_salience = False  # logits and predictions only: an accuracy-only job runs no salience method
    positive_index: int | None = None

    def default_params(self) -> dict[str, Any]:
        return {"bootstrap_resamples": DEFAULT_RESAMPLES, "positive_index": None}

    def _positive(self, n_classes: int) -> int:
        pos = self.positive_index if self.positive_index is not None else self.params.get("positive_index")
        pos = n_classes - 1 if pos is None else int(pos)
        if not 0 <= pos < n_classes:
            raise ValueError(f"positive_index {pos} is not a class of a model with {n_classes} classes")
        return pos

    def per_image(self, ctx: BatchContext) -> Columns:
        n = len(ctx.keys)
        preds, scores = [], []
        pos = 0
        for r, res in enumerate(ctx.clean):
            probs = ctx.probabilities_fn(r, res.logits)
            pos = self._positive(probs.shape[1])
            scores.append(probs[:, pos].detach().cpu().double().numpy())
            preds.append(res.predicted.detach().cpu().numpy().astype(np.int64))
        return {
            "label": ctx.labels.detach().cpu().numpy().astype(np.int64),
            "predicted": np.stack(preds, axis=1),
            "score": np.stack(scores, axis=1),
            "positive_index": np.full(n, pos, dtype=np.int64),
        }

    def per_image_oos(self, ctx: BatchContext) -> Columns:
        return self.per_image(ctx)

    def _block(self, cols: Columns, prefix: str, rng_seed: int, reps: int) -> list[MeasureResult]:
        labels = np.asarray(cols["label"], dtype=np.int64)
        ok = labels >= 0
        names = (prefix, f"{prefix}.balanced", f"{prefix}.auroc")
        params = {"bootstrap_resamples": reps, "excluded": "images with label -1 (unknown)"}
        if not ok.any():
            return [
                self.unavailable(nm, params, {"message": "no labelled images"})
                for nm in names
            ]
        y = labels[ok]
        pred = np.asarray(cols["predicted"])[ok]
        score = np.asarray(cols["score"], dtype=np.float64)[ok]
        pos = int(np.asarray(cols["positive_index"])[0])
        positive = y == pos
        n, k = pred.shape
        correct = (pred == y[:, None]).astype(np.float64)
        per_run_stats = {
            names[0]: [_accuracy_stat(correct[:, r]) for r in range(k)],
            names[1]: [_balanced_stat(correct[:, r], y) for r in range(k)],
            names[2]: [_auroc_stat(score[:, r], positive) for r in range(k)],
        }
        ones = np.ones((1, n))
        out = []
        for nm, stats in per_run_stats.items():
            kind, direction = self.variants[nm]
            value = as_float(_family(stats)(ones)[0])
            per_run = [
                {"run": r, "value": as_float(st(ones)[0]), "ci": bootstrap_statistic(n, st, rng_seed, reps)}
                for r, st in enumerate(stats)
            ]
            details: dict[str, Any] = {
                "n_positive": int(positive.sum()),
                "n_negative": int((~positive).sum()),
                "classes": {str(c): int((y == c).sum()) for c in np.unique(y)},
                "unlabelled": int((~ok).sum()),
            }
            p = dict(params)
            if nm.endswith("auroc"):
                p["positive_index"] = pos
                if positive.all() or not positive.any():
                    details["message"] = "AUROC needs labelled images of both the positive class and others"
            ci = bootstrap_statistic(n, _family(stats), rng_seed, reps)
            out.append(
                MeasureResult(
                    name=nm,
                    value=value,
                    ci=ci,
                    n=n,
                    direction=direction,
                    variant=kind,
                    parameters=p,
                    per_run=per_run,
                    details=details,
                )
            )
        return out

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        reps = int(self.params["bootstrap_resamples"])
        out = self._block(cols, "accuracy", rng_seed, reps)
        if oos_cols and len(oos_cols.get("label", ())):
            out += self._block(oos_cols, "accuracy.ood", rng_seed, reps)
        return out
