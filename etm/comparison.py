"""Ranking candidates for model selection, with paired bootstrap CIs.

Candidates are compared on the same images, so differences are paired per image. For each measure
with a preferred direction:

- ``rank`` = 1 + the number of candidates that are *significantly* better (the 95% CI of the
  paired difference excludes 0). Candidates sharing a rank are statistically tied.
- the Pareto set holds every candidate that no other candidate significantly beats on one directed
  measure without being significantly worse on another.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from etm.measures.base import MeasureResult
from etm.stats import paired_difference


def _better(diff: dict[str, Any], direction: str) -> int:
    """+1 when a is significantly better than b (diff = a - b), -1 when worse, 0 when tied."""
    ci = diff.get("ci")
    if ci is None or ci[0] is None:
        return 0
    lo, hi = ci
    sign = 1 if direction == "higher" else -1
    if lo > 0:
        return sign
    if hi < 0:
        return -sign
    return 0


def compare(results: dict[str, list[MeasureResult]], seed: int, n_resamples: int) -> dict[str, Any]:
    """``results``: candidate -> its flat list of measure results."""
    names = list(results)
    by_measure: dict[str, dict[str, MeasureResult]] = {}
    for cand, rs in results.items():
        for r in rs:
            if r.direction is not None and r.per_image is not None and r.value is not None:
                by_measure.setdefault(r.name, {})[cand] = r
    measures: dict[str, Any] = {}
    wins: dict[tuple[str, str], list[int]] = {(a, b): [] for a in names for b in names if a != b}
    for mname, per_cand in sorted(by_measure.items()):
        if len(per_cand) != len(names):
            continue
        direction = next(iter(per_cand.values())).direction
        assert direction is not None
        pairs = []
        better_count = dict.fromkeys(names, 0)
        for a, b in combinations(names, 2):
            d = paired_difference(
                np.asarray(per_cand[a].per_image, dtype=np.float64),
                np.asarray(per_cand[b].per_image, dtype=np.float64),
                seed,
                n_resamples,
            )
            verdict = _better(d, direction)
            pairs.append({"a": a, "b": b, **d, "better": a if verdict > 0 else b if verdict < 0 else None})
            if verdict > 0:
                better_count[b] += 1
            elif verdict < 0:
                better_count[a] += 1
            wins[(a, b)].append(verdict)
            wins[(b, a)].append(-verdict)
        sign = -1 if direction == "higher" else 1
        order = sorted(names, key=lambda c: (1 + better_count[c], sign * float(per_cand[c].value), c))
        ranking = [
            {
                "candidate": c,
                "rank": 1 + better_count[c],
                "value": per_cand[c].value,
                "ci": per_cand[c].ci,
                "tied_with": [o for o in names if o != c and 1 + better_count[o] == 1 + better_count[c]],
            }
            for c in order
        ]
        measures[mname] = {"direction": direction, "ranking": ranking, "paired_differences": pairs}
    pareto = [
        c
        for c in names
        if not any(any(v > 0 for v in wins[(o, c)]) and not any(v < 0 for v in wins[(o, c)]) for o in names if o != c)
    ]
    return {
        "candidates": names,
        "measures": measures,
        "pareto_set": pareto,
        "method": "paired bootstrap over images; rank = 1 + number of significantly better candidates",
    }
