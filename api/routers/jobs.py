"""Jobs: submit, follow, cancel, list; read the report, the per-image CSV and the artifacts.

The HTTP side only: submission is ``jobs.submit``, records are ``jobs.job_store``'s, results
``jobs.results``', and a job's JSON is ``jobs.view``'s.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request, Response

from api.deps import ArtifactName, JobId, JobsDep, PrincipalDep, ServicesDep, SettingsDep, StoreDep
from api.openapi_doc import response_headers
from api.problems import ProblemError, problem_responses
from api.schemas import ArtifactList, JobList, JobRequest
from api.security.auth import authenticate
from api.security.ratelimit import limit
from jobs.job_store import JobStore
from jobs.records import JobRecord
from jobs.results import ResultStore
from jobs.storage import ArtifactStore, NotFound
from jobs.submit import submit
from jobs.view import Job, JobStatus, job_path, present

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 403, 503), dependencies=[Depends(authenticate)]
)


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "application/json" or ctype.endswith("+json")):
        raise ProblemError(
            415,
            f"send the job as JSON with Content-Type: application/json (got {ctype or 'no content type'})",
        )


def _job_or_404(jobs: JobStore, job_id: str, tenant: str) -> JobRecord:
    job = jobs.get_for(job_id, tenant)  # another tenant's job answers exactly like an unknown one
    if job is None:
        raise ProblemError(404, f"no job {job_id!r}; list jobs at GET /v1/jobs")
    return job


@router.post(
    "",
    status_code=202,
    response_model=Job,
    summary="Submit an evaluation job",
    description="The body is an EvaluationSpec whose `models` are model ids and whose `dataset`/`ood_dataset` "
    "are dataset ids, plus an optional `callback_url`. Answers 202 with `Location` and `Retry-After`. A job "
    "whose result is cached comes back already `succeeded` with `cache_hit: true`. With an `Idempotency-Key` "
    "header, repeating the same body returns the same job; another body with the same key is a 422.",
    responses={
        202: {"description": "Accepted (or already succeeded from the cache).",
              "headers": response_headers("Location", "Retry-After", "Idempotent-Replayed")},
        **problem_responses(409, 413, 415, 429, 503),
    },
    dependencies=[Depends(limit("jobs")), Depends(require_json)],
)
def create_job(
    body: JobRequest,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    background: BackgroundTasks,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Makes retries safe.")] = None,
) -> Job:
    settings, jobs = services.settings, services.jobs
    done = submit(
        body.model_dump(mode="json"),
        tenant=principal.tenant,
        settings=settings,
        jobs=jobs,
        registry=services.registry.for_tenant(principal.tenant),
        send=services.send_task,
        idempotency_key=idempotency_key,
    )
    if done.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if done.cached:
        # After the answer: the record is in Redis already, and the store write (an HTTP PUT on S3) was the
        # slowest step of a cache hit.
        background.add_task(jobs.snapshot, done.job.id)
        if done.job.callback_url:
            # queued after the snapshot (which it would race); sent on the callback threads, not the request pool
            background.add_task(services.callbacks.submit, done.job.id)
    response.status_code = 202
    response.headers["Location"] = job_path(done.job.id)
    response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return present(done.job)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    jobs: JobsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, description="Page size (at most ETM_LIST_LIMIT_MAX).")] = 20,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,19}$", description="next_cursor of the previous page.")
    ] = None,
) -> JobList:
    """The tenant's jobs, newest first, a page at a time (``next_cursor``), optionally only those in one state."""
    limit = min(limit, settings.list_limit_max)
    items, nxt = jobs.list(status, limit, int(cursor) if cursor else None, principal.tenant)
    return JobList(items=[present(j) for j in items], next_cursor=str(nxt) if nxt else None)


@router.get("/{job_id}", response_model=Job, summary="Get a job", responses=problem_responses(404, 503))
def get_job(job_id: JobId, jobs: JobsDep, principal: PrincipalDep) -> Job:
    """The job's state, progress (stage, done/total, ETA), links to its results once it succeeded, or its error."""
    return present(_job_or_404(jobs, job_id, principal.tenant))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    summary="Cancel a job",
    description="A queued job is canceled at once; a running one stops at its next batch (within seconds).",
    responses={202: {"description": "Cancel requested.", "headers": response_headers("Retry-After")},
               **problem_responses(404, 409)},
)
def cancel_job(
    job_id: JobId,
    jobs: JobsDep,
    response: Response,
    settings: SettingsDep,
    principal: PrincipalDep,
    services: ServicesDep,
) -> Job:
    job = _job_or_404(jobs, job_id, principal.tenant)
    if job.ended:
        raise ProblemError(409, f"job {job_id} already ended ({job.status}); there is nothing to cancel")
    job = jobs.request_cancel(job_id) or job
    if job.status == "canceled" and job.callback_url:
        services.callbacks.submit(job_id)  # it ended here, while queued: no worker will report it
    response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return present(job)


def _finished(jobs: JobStore, job_id: str, settings: Any, tenant: str) -> JobRecord:
    job = _job_or_404(jobs, job_id, tenant)
    if job.status == "succeeded":
        return job
    if job.status in ("queued", "running"):
        frac = job.progress.fraction if job.progress is not None else 0.0
        raise ProblemError(
            409,
            f"job {job_id} is {job.status} ({frac:.0%} done); the report exists once it succeeded. "
            f"Poll GET /v1/jobs/{job_id}",
            slug="job-not-finished",
            title="Job not finished",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    why = (job.error or {}).get("detail", "") if job.status == "failed" else ""
    raise ProblemError(
        409,
        f"job {job_id} {job.status}" + (f": {why}" if why else "") + "; it has no report",
        slug="job-not-finished",
        title="Job not finished",
    )


_REPORT_RESPONSES = {
    200: {
        "description": "The versioned report (openapi/report.schema.json).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}},
    },
    **problem_responses(404, 409, 410),
}


@router.get(
    "/{job_id}/report",
    summary="The job's report (JSON)",
    description="Every measure of every candidate with its 95% CI, the paired comparisons, the ranking and the "
    "provenance, as versioned JSON (`schema_version`, `measures_version`).",
    response_class=Response,
    responses=_REPORT_RESPONSES,
)
def get_report(job_id: JobId, jobs: JobsDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    data = jobs.get_report(_cache_key(job))
    if data is None:
        raise ProblemError(410, f"the report of job {job_id} is no longer stored; submit the job again")
    return Response(content=data, media_type="application/json")


@router.get(
    "/{job_id}/report.csv",
    summary="Per-image results (CSV)",
    description="One row per candidate, run and image, with every per-image value behind the report's numbers.",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}},
              "description": "One row per candidate, run and image."},
        **problem_responses(404, 409, 410),
    },
)
def get_report_csv(
    job_id: JobId, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    try:
        data = ResultStore(store).per_image_csv(_cache_key(job))
    except NotFound as exc:
        raise ProblemError(410, f"the per-image CSV of job {job_id} is no longer stored") from exc
    return Response(
        content=data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
    )


def _cache_key(job: JobRecord) -> str:
    assert job.cache_key is not None  # a succeeded job has one
    return job.cache_key


def _artifacts(store: ArtifactStore, job: JobRecord) -> list[dict[str, Any]]:
    return ResultStore(store).artifacts(_cache_key(job))


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="List the job's artifacts",
    description="Salience overlay PNGs (the same images for every candidate), overlays.json (which image each "
    "overlay shows, with predictions) and curves.json (every measure's curves per candidate).",
    responses=problem_responses(404, 409),
)
def list_artifacts(
    job_id: JobId, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> ArtifactList:
    job = _finished(jobs, job_id, settings, principal.tenant)
    return ArtifactList(
        items=[{**a, "url": f"/v1/jobs/{job_id}/artifacts/{a['name']}"} for a in _artifacts(store, job)]
    )


_INDEX_RESPONSES = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}, "description": "The index (JSON)."},
    **problem_responses(404, 409, 410),
}


# The two JSON indexes have paths of their own, declared before the overlays' template: each path then has one
# media type, so the document says exactly what comes back and generated clients parse each body correctly.
@router.get(
    "/{job_id}/artifacts/overlays.json",
    summary="Which image each overlay shows",
    description="The overlay index: per candidate, each overlay PNG's image key, label and per-run predictions.",
    response_class=Response,
    responses=_INDEX_RESPONSES,
)
def get_overlay_index(
    job_id: JobId, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    return _artifact_response(job_id, "overlays.json", jobs, store, settings, principal.tenant)


@router.get(
    "/{job_id}/artifacts/curves.json",
    summary="Every measure's curves per candidate",
    description="The curves behind the report's charts (noise, deletion, ...), per candidate and measure.",
    response_class=Response,
    responses=_INDEX_RESPONSES,
)
def get_curves(
    job_id: JobId, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    return _artifact_response(job_id, "curves.json", jobs, store, settings, principal.tenant)


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one overlay image",
    description="A salience overlay PNG, by the name the artifact list gives (the JSON indexes have their own "
    "paths). Generated clients read it as bytes (openapi/generator-config.yml maps image/png to bytes for "
    "openapi-python-client).",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
              "description": "The PNG."},
        **problem_responses(404, 409, 410),
    },
)
def get_artifact(
    job_id: JobId, name: ArtifactName, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    return _artifact_response(job_id, name, jobs, store, settings, principal.tenant)


def _artifact_response(
    job_id: str, name: str, jobs: JobStore, store: ArtifactStore, settings: Any, tenant: str
) -> Response:
    job = _finished(jobs, job_id, settings, tenant)
    entry = next((a for a in _artifacts(store, job) if a["name"] == name), None)
    if entry is None:
        raise ProblemError(404, f"job {job_id} has no artifact {name!r}; list them at GET /v1/jobs/{job_id}/artifacts")
    try:
        data = ResultStore(store).artifact(_cache_key(job), name)
    except NotFound as exc:
        raise ProblemError(410, f"artifact {name!r} of job {job_id} is no longer stored") from exc
    return Response(content=data, media_type=entry["media_type"])
