"""Ranking candidates for model selection, with paired bootstrap CIs, and the one "first place" rule.

Candidates are compared on the same images, so differences are paired per image. For each measure
with a preferred direction and per-image values:

- ``rank`` = 1 + the number of candidates that are *significantly* better (the 95% CI of the
  paired difference excludes 0). Candidates sharing a rank are statistically tied.
- the Pareto set holds every candidate that no other candidate significantly beats on one directed
  measure without being significantly worse on another.
- a candidate holds *first place* on a measure when it ranks 1 and not every candidate does (a tie of
  everyone is nobody's first place). The report page, ``etm compare``, the examples and the
  leaderboard all decide it with :func:`holds_first_place` (counted by :func:`first_places`).

Measures without per-image values (accuracy, balanced accuracy, AUROC: not means over images) have no
paired difference, so nothing ranks them: they are reported with their CIs, for context.

The leaderboard ranks across jobs with :func:`rank_across_jobs`: the same rank and tie rule, where
"significantly better" is the paired verdict of a job that scored both, else non-overlapping 95% CIs.

Only :func:`compare` needs numpy: the rest is plain Python on report dicts, so the client (installed
without dependencies) imports this module for the first-place rule.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from etm.measures.base import MeasureResult

K = TypeVar("K", bound=Hashable)


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


def rank_order(
    items: Sequence[K],
    beats: set[tuple[K, K]],
    value: Callable[[K], float | None],
    label: Callable[[K], str],
    direction: str,
) -> list[tuple[K, int, list[K]]]:
    """``(item, rank, tied_with)`` best first: rank = 1 + the items that beat it (``(winner, loser)`` in
    ``beats``); equal ranks are ties (``tied_with`` in ``items`` order); within a rank, the better value first,
    then the label."""
    n_better = {b: sum(1 for a in items if a != b and (a, b) in beats) for b in items}
    sign = -1 if direction == "higher" else 1

    def key(item: K) -> tuple[Any, ...]:
        v = value(item)
        return (n_better[item], v is None, sign * float(v) if v is not None else 0.0, label(item))

    return [
        (item, 1 + n_better[item], [o for o in items if o != item and n_better[o] == n_better[item]])
        for item in sorted(items, key=key)
    ]


def compare(results: dict[str, list[MeasureResult]], seed: int, n_resamples: int) -> dict[str, Any]:
    """``results``: candidate -> its flat list of measure results."""
    import numpy as np  # here, not at the top: see the module docstring

    from etm.stats import paired_difference

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
        beats: set[tuple[str, str]] = set()
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
                beats.add((a, b))
            elif verdict < 0:
                beats.add((b, a))
            wins[(a, b)].append(verdict)
            wins[(b, a)].append(-verdict)
        values = {c: per_cand[c].value for c in names}
        ranking = [
            {"candidate": c, "rank": rank, "value": per_cand[c].value, "ci": per_cand[c].ci, "tied_with": tied}
            for c, rank, tied in rank_order(names, beats, values.__getitem__, str, direction)
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


# -- first place -----------------------------------------------------------------------------------


def holds_first_place(rank: int, ranks: Collection[int]) -> bool:
    """The rule: first place is rank 1 (no other candidate significantly better) on a measure where not every
    candidate ranks 1 (a tie of everyone is nobody's first place). ``ranks``: every candidate's rank there."""
    return rank == 1 and any(r != 1 for r in ranks)


def first_place_holders(ranking: Sequence[Mapping[str, Any]]) -> list[str]:
    """Who holds first place on one ranked measure (its ``ranking`` entries: ``candidate``, ``rank``). An entry
    marked ``trusted: false`` (its candidate failed the sanity check, see ``mark_untrusted``) holds none."""
    ranks = [e["rank"] for e in ranking]
    return [
        str(e["candidate"]) for e in ranking if holds_first_place(e["rank"], ranks) and e.get("trusted", True)
    ]


# -- the sanity verdict ------------------------------------------------------------------------------

UNTRUSTED_NOTE = (
    "failed the randomisation sanity check (sanity.mprt): its maps barely change when the model's weights are "
    "re-initialised, so its salience-based measures are not evidence about the model; they are shown, marked, and "
    "hold no first place"
)


def mark_untrusted(comparison: dict[str, Any], verdicts: Mapping[str, Mapping[str, Any]],
                   salience_based: Collection[str]) -> None:
    """Record the sanity verdicts in a report's ``comparison`` block (in place): ``comparison["sanity"]`` names
    the candidates that failed and the rule, and on every salience-based measure their ranking entries get
    ``trusted: false`` (so ``first_place_holders`` skips them). ``verdicts``: candidate -> ``passed``/``rule``/...
    (``etm.measures.sanity.mprt_verdict``); a candidate without a verdict is not judged."""
    failed = sorted(c for c, v in verdicts.items() if v.get("passed") is False)
    affected = sorted(m for m in comparison.get("measures", {}) if m in salience_based)
    rule = next((v.get("rule") for v in verdicts.values() if v.get("rule")), "")
    comparison["sanity"] = {
        "untrusted": failed,
        "unchecked": sorted(
            c for c in comparison.get("candidates", []) if (verdicts.get(c) or {}).get("passed") is None
        ),
        "rule": rule,
        "measures_affected": affected if failed else [],
        "note": UNTRUSTED_NOTE if failed else "",
    }
    for m in affected:
        for e in comparison["measures"][m]["ranking"]:
            if e["candidate"] in failed:
                e["trusted"] = False


def first_places(comparison: Mapping[str, Any]) -> dict[str, int]:
    """On how many ranked measures each candidate holds first place (a report's ``comparison`` block)."""
    out = {str(c): 0 for c in comparison.get("candidates") or []}
    for m in (comparison.get("measures") or {}).values():
        for c in first_place_holders(m.get("ranking") or []):
            out[c] = out.get(c, 0) + 1
    return out


# -- across jobs (the leaderboard) -----------------------------------------------------------------


def _ci(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return float(v[0]), float(v[1])
    return None


def ci_verdict(a: Any, b: Any, direction: str) -> int:
    """+1 when a's 95% CI lies entirely on the better side of b's, -1 the other way, 0 when they overlap
    (or one is missing): the unpaired test, for two candidates no job scored together."""
    ca, cb = _ci(a), _ci(b)
    if ca is None or cb is None:
        return 0
    if ca[0] > cb[1]:
        return 1 if direction == "higher" else -1
    if ca[1] < cb[0]:
        return -1 if direction == "higher" else 1
    return 0


def rank_across_jobs(
    measures: Mapping[K, Mapping[str, Any]],
    direction: str,
    met: set[frozenset[K]],
    paired_beats: set[tuple[K, K]],
    label: Callable[[K], str],
) -> list[dict[str, Any]]:
    """One measure ranked over candidates from several jobs: ``measures`` maps each candidate to its measure
    dict (``value``, ``ci``); ``met`` holds the pairs some job scored together, ``paired_beats`` the
    ``(winner, loser)`` verdicts of those jobs' paired comparisons. Candidates that met are judged by the paired
    verdict, the others by non-overlapping CIs. With one job this is that job's ranking. Entries carry
    ``key`` (the candidate), ``rank``, ``value``, ``ci``, ``tied_with`` (keys) and ``first_place``."""
    items = list(measures)
    beats = {
        (a, b)
        for a in items
        for b in items
        if a != b
        and ((a, b) in paired_beats if frozenset((a, b)) in met
             else ci_verdict(measures[a].get("ci"), measures[b].get("ci"), direction) > 0)
    }
    order = rank_order(items, beats, lambda k: measures[k].get("value"), label, direction)
    entries = [
        {"key": k, "rank": rank, "value": measures[k].get("value"), "ci": measures[k].get("ci"), "tied_with": tied}
        for k, rank, tied in order
    ]
    ranks = [e["rank"] for e in entries]
    for e in entries:
        e["first_place"] = holds_first_place(e["rank"], ranks)
    return entries
