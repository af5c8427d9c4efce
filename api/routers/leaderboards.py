"""Leaderboards: every candidate scored on a dataset, across jobs, ranked per measure.

Candidates are only comparable when their numbers come from the same configuration, so the finished
jobs on a dataset are grouped into *boards* by their spec without the settings that do not change a
candidate's numbers (its companions, ``measures``, ``overlays``, ``batch_size``). Within a board:

- a candidate is its list of model ids (the same models under two names are one entry, listed with
  both names); its values come from the newest report that scored it (equal specs give equal numbers);
- "A is significantly better than B" uses the paired comparison of a job that scored both (the same
  images, so the paired bootstrap CI of the per-image difference decides); for two candidates that
  never met in one job it needs their 95% CIs not to overlap (unpaired, hence more conservative);
- rank = 1 + the number of candidates significantly better; equal ranks are ties. With one job per
  board this is exactly the ranking in that job's report.

Reads the final job records (``jobs/<id>.json``) and reports in the store: no Redis scan, and it
still answers after Redis lost its memory. Cost grows with the number of finished jobs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.deps import JobsDep, PrincipalDep, RegistryDep, StoreDep
from api.problems import ProblemError, problem_responses
from api.security.auth import authenticate
from etm.store import NotFound
from jobs.records import tenant_of

router = APIRouter(
    prefix="/v1/leaderboards", tags=["jobs"], responses=problem_responses(401, 403, 503),
    dependencies=[Depends(authenticate)],
)

# Spec fields that do not change a candidate's numbers (only which numbers exist, or how fast).
_NOT_CONFIG = ("candidates", "measures", "overlays", "batch_size")
METHOD = (
    "per measure, rank = 1 + the number of candidates significantly better: paired bootstrap CI of the "
    "per-image difference when a job scored both, else non-overlapping 95% CIs"
)


class LeaderboardEntry(BaseModel):
    candidate: str = Field(..., description="The candidate's name in the newest job that scored it.")
    models: list[str] = Field(..., description="Model ids: what identifies the candidate.")
    rank: int = Field(..., ge=1)
    value: float | None
    ci: list[float | None] | None
    tied_with: list[str]


class LeaderboardMeasure(BaseModel):
    direction: str = Field(..., description="higher or lower is better")
    ranking: list[LeaderboardEntry]


class LeaderboardCandidate(BaseModel):
    name: str
    models: list[str]
    aliases: list[str] = Field(..., description="Other names the same models were submitted under.")
    jobs: list[str] = Field(..., description="Finished jobs that scored it, newest first.")


class Board(BaseModel):
    config_key: str = Field(..., description="sha256 of the configuration shared by the board's jobs.")
    config: dict[str, Any] = Field(..., description="The shared spec fields (split, method, seed, ...).")
    n_jobs: int
    updated_at: str | None = Field(None, description="When the newest job of the board finished.")
    candidates: list[LeaderboardCandidate]
    measures: dict[str, LeaderboardMeasure]


class Leaderboard(BaseModel):
    dataset: str
    method: str
    boards: list[Board] = Field(..., description="One per configuration, the most recently updated first.")


def config_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _NOT_CONFIG}


def config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ci(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return float(v[0]), float(v[1])
    return None


def _verdict(a: tuple[float, float] | None, b: tuple[float, float] | None, direction: str) -> int:
    """+1 when a's CI lies entirely on the better side of b's, -1 the other way, 0 when they overlap."""
    if a is None or b is None:
        return 0
    if a[0] > b[1]:
        return 1 if direction == "higher" else -1
    if a[1] < b[0]:
        return -1 if direction == "higher" else 1
    return 0


def build_boards(finished: Iterable[tuple[dict[str, Any], dict[str, Any]]], only: str | None = None) -> list[Board]:
    """Boards from ``(job record, report)`` pairs of succeeded jobs on one dataset, newest job first."""
    groups: dict[str, dict[str, Any]] = {}
    for job, report in finished:
        cfg = config_of(job["spec"])
        key = config_key(cfg)
        g = groups.setdefault(key, {"config": cfg, "jobs": [], "cands": {}, "paired": {}, "updated": None})
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
            entry["jobs"].append(job["id"])
        for mname, cm in ((report.get("comparison") or {}).get("measures") or {}).items():
            for p in cm.get("paired_differences", []):
                a, b = names.get(p["a"]), names.get(p["b"])
                if a is None or b is None:
                    continue
                g["paired"].setdefault((mname, a, b), None)  # they met; None: tied
                if p.get("better") is not None:
                    win = a if p["better"] == p["a"] else b
                    g["paired"][(mname, win, b if win == a else a)] = True
    boards = []
    for key, g in groups.items():
        cands: dict[tuple[str, ...], dict[str, Any]] = g["cands"]
        label = {ident: e["name"] for ident, e in cands.items()}
        # A name shared by different model lists would be ambiguous on the board: qualify it.
        seen: dict[str, int] = {}
        for ident in cands:
            seen[label[ident]] = seen.get(label[ident], 0) + 1
        for ident in cands:
            if seen[label[ident]] > 1:
                label[ident] = f"{label[ident]} ({', '.join(ident)})"
        measures: dict[str, LeaderboardMeasure] = {}
        all_measures = sorted({m for e in cands.values() for m in e["measures"]})
        for mname in all_measures:
            measures[mname] = _rank(mname, cands, label, g["paired"])
        boards.append(
            Board(
                config_key=key,
                config=g["config"],
                n_jobs=len(g["jobs"]),
                updated_at=g["updated"],
                candidates=[
                    LeaderboardCandidate(name=label[i], models=list(i), aliases=e["aliases"], jobs=e["jobs"])
                    for i, e in cands.items()
                ],
                measures=measures,
            )
        )
    return boards


def _rank(
    mname: str,
    cands: dict[tuple[str, ...], dict[str, Any]],
    label: dict[tuple[str, ...], str],
    paired: dict[tuple[str, tuple[str, ...], tuple[str, ...]], bool | None],
) -> LeaderboardMeasure:
    """One measure of one board: who is significantly better than whom, then ranks with ties."""
    have = [ident for ident, e in cands.items() if mname in e["measures"]]
    direction = cands[have[0]]["measures"][mname]["direction"]

    def better(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        if (mname, a, b) in paired or (mname, b, a) in paired:  # they met in one job: its paired verdict
            return paired.get((mname, a, b)) is True
        ci_a, ci_b = (_ci(cands[x]["measures"][mname].get("ci")) for x in (a, b))
        return _verdict(ci_a, ci_b, direction) > 0

    n_better = {b: sum(1 for a in have if a != b and better(a, b)) for b in have}
    sign = -1 if direction == "higher" else 1

    def order(ident: tuple[str, ...]) -> tuple[Any, ...]:
        v = cands[ident]["measures"][mname].get("value")
        return (n_better[ident], v is None, sign * (v if v is not None else 0.0), label[ident])

    ranking = [
        LeaderboardEntry(
            candidate=label[ident],
            models=list(ident),
            rank=1 + n_better[ident],
            value=cands[ident]["measures"][mname].get("value"),
            ci=cands[ident]["measures"][mname].get("ci"),
            tied_with=[label[o] for o in have if o != ident and n_better[o] == n_better[ident]],
        )
        for ident in sorted(have, key=order)
    ]
    return LeaderboardMeasure(direction=direction, ranking=ranking)


@router.get(
    "/{dataset_id}",
    response_model=Leaderboard,
    summary="Rank every candidate scored on a dataset",
    description="Gathers the succeeded jobs on the dataset, groups them by configuration (spec without "
    "candidates, measures, overlays and batch_size) and ranks every distinct candidate (list of model ids) per "
    "measure with a preferred direction. Significance: the paired comparison of a job that scored both "
    "candidates, else non-overlapping 95% CIs.",
    responses=problem_responses(404),
)
def get_leaderboard(
    dataset_id: str,
    jobs: JobsDep,
    store: StoreDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    measure: Annotated[str | None, Query(description="Only this measure (e.g. stability.ssim).")] = None,
) -> Leaderboard:
    if registry.get_dataset(dataset_id) is None:
        raise ProblemError(404, f"no dataset {dataset_id!r}; list datasets at GET /v1/datasets")
    records = []
    for name in store.list("jobs"):
        if not name.endswith(".json"):
            continue
        try:
            job = store.read_json(f"jobs/{name}")
        except (NotFound, ValueError):
            continue
        if (
            job.get("status") == "succeeded"
            and tenant_of(job) == principal.tenant  # a tenant's board shows only its own jobs
            and (job.get("spec") or {}).get("dataset") == dataset_id
        ):
            records.append(job)
    records.sort(key=lambda j: (j.get("finished_at") or 0, j.get("seq") or 0), reverse=True)
    reports: dict[str, dict[str, Any] | None] = {}
    pairs = []
    for job in records:
        key = job.get("cache_key")
        if key not in reports:
            raw = jobs.get_report(key) if key else None
            reports[key] = json.loads(raw) if raw else None
        if reports[key] is not None:
            pairs.append((job, reports[key]))
    boards = build_boards(pairs, measure)
    if measure is not None and pairs and not any(b.measures for b in boards):
        raise ProblemError(404, f"no job on {dataset_id} has the directed measure {measure!r}")
    return Leaderboard(dataset=dataset_id, method=METHOD, boards=boards)


def _iso(ts: Any) -> str | None:
    from etm.store import iso

    return iso(float(ts)) if isinstance(ts, (int, float)) else None
