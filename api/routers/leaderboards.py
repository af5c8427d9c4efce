"""``GET /v1/leaderboards/{dataset_id}``: the HTTP side of ``etm.leaderboard`` (boards and their ranking).

Reads the final job records (``jobs/<id>.json``) and reports in the store: no Redis scan, and it
still answers after Redis lost its memory. Cost grows with the number of finished jobs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.deps import DatasetId, JobsDep, PrincipalDep, RegistryDep, StoreDep
from api.problems import ProblemError, problem_responses
from api.security.auth import authenticate
from etm.leaderboard import METHOD, build_boards
from jobs.records import tenant_of
from jobs.storage import NotFound

router = APIRouter(
    prefix="/v1/leaderboards", tags=["jobs"], responses=problem_responses(401, 403, 503),
    dependencies=[Depends(authenticate)],
)


class LeaderboardEntry(BaseModel):
    candidate: str = Field(..., description="The candidate's name in the newest job that scored it.")
    models: list[str] = Field(..., description="Model ids: what identifies the candidate.")
    rank: int = Field(..., ge=1)
    value: float | None
    ci: list[float | None] | None
    tied_with: list[str]
    first_place: bool = Field(..., description="Rank 1 on a measure where not every candidate ranks 1 (the rule "
                              "of etm.comparison.holds_first_place, as on the report page and in etm compare).")
    trusted: bool = Field(True, description="False on a salience-based measure when the candidate failed the "
                          "randomisation sanity check (sanity.mprt; docs/MEASURES.md): ranked, but no first place.")


class LeaderboardMeasure(BaseModel):
    direction: str = Field(..., description="higher or lower is better")
    ranking: list[LeaderboardEntry]


class LeaderboardCandidate(BaseModel):
    name: str
    models: list[str]
    aliases: list[str] = Field(..., description="Other names the same models were submitted under.")
    jobs: list[str] = Field(..., description="Finished jobs that scored it, newest first.")
    sanity: dict[str, Any] | None = Field(None, description="The candidate's sanity verdict from its newest report "
                                          "that ran the sanity checks (passed, trusted, rule, threshold, upper).")


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


@router.get(
    "/{dataset_id}",
    response_model=Leaderboard,
    summary="Rank every candidate scored on a dataset",
    description="Gathers the succeeded jobs on the dataset, groups them by configuration (spec without "
    "candidates, measures, overlays and batch_size) and ranks every distinct candidate (list of model ids) per "
    "measure a job's comparison ranks (a preferred direction and per-image values: not accuracy). Significance: "
    "the paired comparison of a job that scored both candidates, else non-overlapping 95% CIs.",
    responses=problem_responses(404),
)
def get_leaderboard(
    dataset_id: DatasetId,
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
    boards = [Board.model_validate(b) for b in build_boards(pairs, measure)]
    if measure is not None and pairs and not any(b.measures for b in boards):
        raise ProblemError(404, f"no job on {dataset_id} ranks the measure {measure!r}")
    return Leaderboard(dataset=dataset_id, method=METHOD, boards=boards)
