"""Leaderboards: every candidate scored on a dataset, across jobs, ranked per measure.

Candidates are only comparable when their numbers come from the same configuration, so the finished
jobs on a dataset are grouped into *boards* by their spec without the settings that do not change a
candidate's numbers (its companions, ``measures``, ``overlays``, ``batch_size``). Within a board:

- a candidate is its list of model ids (the same models under two names are one entry, listed with
  both names); its values come from the newest report that scored it (equal specs give equal numbers);
- the measures are those a job's comparison ranked (paired per-image differences; accuracy is not
  among them), ranked by :func:`etm.comparison.rank_across_jobs`: the paired verdict of a job that
  scored both, else non-overlapping 95% CIs; rank = 1 + the number of candidates significantly better,
  equal ranks are ties, first place as everywhere else (:func:`etm.comparison.holds_first_place`).
  With one job per board this is exactly the ranking in that job's report.
- the sanity verdict (``sanity.*``, docs/MEASURES.md): a candidate whose newest report with a verdict says it
  failed is marked ``trusted: false`` on every salience-based measure, and holds no first place there (as in
  that job's report); its entry in ``candidates`` carries the verdict.

Plain dicts in and out (the API validates them into its response models).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from etm.comparison import rank_across_jobs
from etm.timestamps import iso

# Spec fields that do not change a candidate's numbers (only which numbers exist, or how fast).
_NOT_CONFIG = ("candidates", "measures", "overlays", "batch_size")
METHOD = (
    "per measure a job's comparison ranks, rank = 1 + the number of candidates significantly better: paired "
    "bootstrap CI of the per-image difference when a job scored both, else non-overlapping 95% CIs"
)

Ident = tuple[str, ...]


def config_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _NOT_CONFIG}


def config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _iso(ts: Any) -> str | None:
    return iso(float(ts)) if isinstance(ts, (int, float)) else None


def _group(finished: Iterable[tuple[dict[str, Any], dict[str, Any]]], only: str | None) -> dict[str, dict[str, Any]]:
    """Per configuration: its jobs, candidates (newest values), the measures some comparison ranked, and who met
    whom (``met``) and who beat whom (``beats``) in a job's paired comparison, per measure."""
    groups: dict[str, dict[str, Any]] = {}
    for job, report in finished:
        cfg = config_of(job["spec"])
        key = config_key(cfg)
        g = groups.setdefault(key, {"config": cfg, "jobs": [], "cands": {}, "met": {}, "beats": {}, "updated": None})
        g["jobs"].append(job["id"])
        g["updated"] = g["updated"] or _iso(job.get("finished_at"))
        names = {c["name"]: tuple(c["models"]) for c in job["spec"]["candidates"]}
        for cand in report.get("candidates", []):
            ident = names.get(cand["name"])
            if ident is None:
                continue
            entry = g["cands"].get(ident)
            if entry is None:  # newest first: the first report seen is the newest
                entry = g["cands"][ident] = {"name": cand["name"], "aliases": [], "jobs": [], "measures": {}}
                for mname, m in (cand.get("measures") or {}).items():
                    if m.get("direction") in ("higher", "lower") and (only is None or mname == only):
                        entry["measures"][mname] = m
            elif cand["name"] != entry["name"] and cand["name"] not in entry["aliases"]:
                entry["aliases"].append(cand["name"])
            if "sanity" not in entry and isinstance(cand.get("sanity"), dict):  # the newest verdict
                entry["sanity"] = cand["sanity"]
            entry["jobs"].append(job["id"])
        for mname, cm in ((report.get("comparison") or {}).get("measures") or {}).items():
            met, beats = g["met"].setdefault(mname, set()), g["beats"].setdefault(mname, set())
            for p in cm.get("paired_differences", []):
                a, b = names.get(p["a"]), names.get(p["b"])
                if a is None or b is None:
                    continue
                met.add(frozenset((a, b)))
                if p.get("better") is not None:
                    beats.add((a, b) if p["better"] == p["a"] else (b, a))
    return groups


def _labels(cands: dict[Ident, dict[str, Any]]) -> dict[Ident, str]:
    """Each candidate's name; a name shared by different model lists would be ambiguous: qualified by the ids."""
    label = {ident: e["name"] for ident, e in cands.items()}
    seen: dict[str, int] = {}
    for ident in cands:
        seen[label[ident]] = seen.get(label[ident], 0) + 1
    for ident in cands:
        if seen[label[ident]] > 1:
            label[ident] = f"{label[ident]} ({', '.join(ident)})"
    return label


def _salience_based() -> set[str]:
    from etm.measures.sanity import salience_based_variants  # the registry: only when a candidate failed

    return salience_based_variants()


def build_boards(
    finished: Iterable[tuple[dict[str, Any], dict[str, Any]]], only: str | None = None
) -> list[dict[str, Any]]:
    """Boards from ``(job record, report)`` pairs of succeeded jobs on one dataset, newest job first; ``only``:
    just that measure (boards that never ranked it are left out)."""
    boards = []
    for key, g in _group(finished, only).items():
        cands: dict[Ident, dict[str, Any]] = g["cands"]
        label = _labels(cands)
        measures: dict[str, Any] = {}
        failed = {i for i, e in cands.items() if (e.get("sanity") or {}).get("passed") is False}
        salience_based = _salience_based() if failed else set()
        for mname in sorted({m for e in cands.values() for m in e["measures"]} & set(g["met"])):
            have = {ident: e["measures"][mname] for ident, e in cands.items() if mname in e["measures"]}
            direction = next(iter(have.values()))["direction"]
            ranking = rank_across_jobs(have, direction, g["met"][mname], g["beats"][mname], label.__getitem__)
            if mname in salience_based:
                for e in ranking:
                    if e["key"] in failed:
                        e["trusted"], e["first_place"] = False, False
            measures[mname] = {
                "direction": direction,
                "ranking": [
                    {**{k: v for k, v in e.items() if k not in ("key", "tied_with")}, "candidate": label[e["key"]],
                     "models": list(e["key"]), "tied_with": [label[o] for o in e["tied_with"]]}
                    for e in ranking
                ],
            }
        if only is not None and not measures:
            continue  # asked for one measure: a board without it says nothing
        boards.append({
            "config_key": key,
            "config": g["config"],
            "n_jobs": len(g["jobs"]),
            "updated_at": g["updated"],
            "candidates": [
                {"name": label[i], "models": list(i), "aliases": e["aliases"], "jobs": e["jobs"],
                 **({"sanity": e["sanity"]} if "sanity" in e else {})}
                for i, e in cands.items()
            ],
            "measures": measures,
        })
    return boards
