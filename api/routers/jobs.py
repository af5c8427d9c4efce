"""Jobs: submit, follow, cancel, list; read the report, the per-image CSV and the artifacts."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse

from api.deps import JobsDep, PrincipalDep, ServicesDep, SettingsDep, StoreDep
from api.problems import ProblemError, problem_responses
from api.schemas import ArtifactList, Job, JobList, JobRequest, JobStatus
from api.security.auth import authenticate
from api.security.ratelimit import limit
from etm.spec import EvaluationSpec
from jobs.admission import check_spec
from jobs.storage import NotFound
from workers.app import TASK_RUN_JOB
from workers.records import TERMINAL, JobStore, body_sha256, new_job_id, problem, public_job

log = logging.getLogger("etm.api")
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


def _job_or_404(jobs: JobStore, job_id: str, tenant: str) -> dict[str, Any]:
    job = jobs.get_for(job_id, tenant)  # another tenant's job answers exactly like an unknown one
    if job is None:
        raise ProblemError(404, f"no job {job_id!r}; list jobs at GET /v1/jobs")
    return job


def _accepted(response: Response, job: dict[str, Any], retry_after: int) -> Job:
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    response.headers["Retry-After"] = str(retry_after)
    return Job.model_validate(public_job(job))


def _replay(jobs: JobStore, prior: dict[str, str], body_sha: str, key: str) -> dict[str, Any]:
    if prior["body_sha256"] != body_sha:
        raise ProblemError(
            422,
            f"Idempotency-Key {key!r} was used for a different job body (job {prior['job_id']}); use a new key "
            "for a new job",
            slug="idempotency-key-reused",
        )
    for _ in range(40):  # a concurrent request with the same key may still be creating the job
        job = jobs.get(prior["job_id"])
        if job is not None:
            return job
        time.sleep(0.05)
    raise ProblemError(409, f"job {prior['job_id']} for this Idempotency-Key is still being created; retry")


@router.post(
    "",
    status_code=202,
    response_model=Job,
    summary="Submit an evaluation job",
    description="The body is an EvaluationSpec whose `models` are model ids and whose `dataset`/`ood_dataset` "
    "are dataset ids, plus an optional `callback_url`. Answers 202 with `Location` and `Retry-After`. A job "
    "whose result is cached comes back already `succeeded` with `cache_hit: true`. With an `Idempotency-Key` "
    "header, repeating the same body returns the same job; another body with the same key is a 422.",
    responses=problem_responses(409, 413, 415, 429, 503),
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
    settings, jobs, registry = services.settings, services.jobs, services.registry.for_tenant(principal.tenant)
    tenant = principal.tenant
    raw = body.model_dump(mode="json")
    body_sha = body_sha256(raw)
    if idempotency_key:
        prior = jobs.idempotency_binding(idempotency_key, tenant)
        if prior is not None:
            job = _replay(jobs, prior, body_sha, idempotency_key)
            response.headers["Idempotent-Replayed"] = "true"
            return _accepted(response, job, settings.retry_after_seconds)
    spec = EvaluationSpec.model_validate({k: v for k, v in raw.items() if k != "callback_url"})
    checked = check_spec(registry, spec)
    if body.callback_url:
        _check_callback(body.callback_url, settings)
    job_id = new_job_id()
    if idempotency_key:
        prior = jobs.claim_idempotency_key(
            idempotency_key, body_sha, job_id, settings.idempotency_ttl_seconds, tenant
        )
        if prior is not None:
            job = _replay(jobs, prior, body_sha, idempotency_key)
            response.headers["Idempotent-Replayed"] = "true"
            return _accepted(response, job, settings.retry_after_seconds)
    t = time.time()
    cached = settings.result_cache and (
        jobs.has_report_copy(checked.cache_key) or services.store.exists(f"results/{checked.cache_key}/report.json")
    )
    job: dict[str, Any] = {
        "id": job_id,
        "tenant": tenant,
        "status": "succeeded" if cached else "queued",
        "created_at": t,
        "updated_at": t,
        "started_at": None,
        "finished_at": t if cached else None,
        "spec": spec.canonical(),
        "callback_url": body.callback_url,
        "cache_key": checked.cache_key,
        "cache_hit": cached,
        "n_images": checked.n_images,
        "shards": None,
        "queue": settings.job_queue,
        "idempotency_key": idempotency_key,
        "cancel_requested": False,
        "error": None,
        "progress": {
            "stage": "done" if cached else "queued",
            "done": 1 if cached else 0,
            "total": 1 if cached else 0,
            "fraction": 1.0 if cached else 0.0,
            "updated_at": t,
        },
    }
    job = jobs.create(job)
    if cached:
        # After the answer: the record is in Redis already, and the store write (an HTTP PUT on S3) was the
        # slowest step of a cache hit.
        background.add_task(jobs.snapshot, job_id)
        if body.callback_url:
            # queued after the snapshot (which it would race); sent on the callback threads, not the request pool
            background.add_task(services.callbacks.submit, job_id)
    else:
        try:
            services.celery.send_task(
                TASK_RUN_JOB, kwargs={"job_id": job_id}, queue=settings.job_queue, task_id=f"{job_id}:run"
            )
        except Exception as exc:  # noqa: BLE001 - the broker refused: the job must not stay queued forever
            log.exception("job %s: could not enqueue", job_id)
            detail = f"the job could not be queued ({type(exc).__name__}); retry shortly"
            t = time.time()
            jobs.transition(
                job_id,
                "failed",
                ("queued",),
                finished_at=t,
                updated_at=t,
                error=problem("enqueue-failed", "Could not queue the job", 503, detail, f"/v1/jobs/{job_id}"),
            )
            jobs.snapshot(job_id)
            raise ProblemError(503, detail, slug="enqueue-failed", headers={"Retry-After": "5"}) from exc
    return _accepted(response, job, settings.retry_after_seconds)


def _check_callback(url: str, settings: Any) -> None:
    """Refuse a callback the workers would not deliver (unsigned service, disallowed host) now, not later."""
    from workers.webhooks import CallbackRefused, check_callback_url

    try:
        check_callback_url(url, settings)
    except CallbackRefused as exc:
        raise ProblemError(422, str(exc), slug="callback-refused", title="Callback URL refused") from exc


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
    limit = min(limit, settings.list_limit_max)
    items, nxt = jobs.list(status, limit, int(cursor) if cursor else None, principal.tenant)
    return JobList(items=[Job.model_validate(public_job(j)) for j in items], next_cursor=str(nxt) if nxt else None)


@router.get("/{job_id}", response_model=Job, summary="Get a job", responses=problem_responses(404, 503))
def get_job(job_id: str, jobs: JobsDep, principal: PrincipalDep) -> Job:
    return Job.model_validate(public_job(_job_or_404(jobs, job_id, principal.tenant)))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    summary="Cancel a job",
    description="A queued job is canceled at once; a running one stops at its next batch (within seconds).",
    responses=problem_responses(404, 409),
)
def cancel_job(
    job_id: str,
    jobs: JobsDep,
    response: Response,
    settings: SettingsDep,
    principal: PrincipalDep,
    services: ServicesDep,
) -> Job:
    job = _job_or_404(jobs, job_id, principal.tenant)
    if job["status"] in TERMINAL:
        raise ProblemError(409, f"job {job_id} already ended ({job['status']}); there is nothing to cancel")
    job = jobs.request_cancel(job_id) or job
    if job["status"] == "canceled" and job.get("callback_url"):
        services.callbacks.submit(job_id)  # it ended here, while queued: no worker will report it
    response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return Job.model_validate(public_job(job))


def _finished(jobs: JobStore, job_id: str, settings: Any, tenant: str) -> dict[str, Any]:
    job = _job_or_404(jobs, job_id, tenant)
    if job["status"] == "succeeded":
        return job
    if job["status"] in ("queued", "running"):
        frac = (job.get("progress") or {}).get("fraction", 0.0)
        raise ProblemError(
            409,
            f"job {job_id} is {job['status']} ({frac:.0%} done); the report exists once it succeeded. "
            f"Poll GET /v1/jobs/{job_id}",
            slug="job-not-finished",
            title="Job not finished",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    why = (job.get("error") or {}).get("detail", "") if job["status"] == "failed" else ""
    raise ProblemError(
        409,
        f"job {job_id} {job['status']}" + (f": {why}" if why else "") + "; it has no report",
        slug="job-not-finished",
        title="Job not finished",
    )


_REPORT_RESPONSES = {
    200: {
        "description": "The versioned report (see openapi/report.schema.json).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **problem_responses(404, 409, 410),
}


@router.get("/{job_id}/report", summary="The job's report (JSON)", responses=_REPORT_RESPONSES)
def get_report(job_id: str, jobs: JobsDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    data = jobs.get_report(job["cache_key"])
    if data is None:
        raise ProblemError(410, f"the report of job {job_id} is no longer stored; submit the job again")
    return Response(content=data, media_type="application/json")


@router.get(
    "/{job_id}/report.csv",
    summary="Per-image results (CSV)",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per candidate, run and image."},
        **problem_responses(404, 409, 410),
    },
)
def get_report_csv(
    job_id: str, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    try:
        data = store.read_bytes(f"results/{job['cache_key']}/per_image.csv")
    except NotFound as exc:
        raise ProblemError(410, f"the per-image CSV of job {job_id} is no longer stored") from exc
    return Response(
        content=data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
    )


def _artifacts(store: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return store.read_json(f"results/{job['cache_key']}/artifacts.json")
    except (NotFound, ValueError):
        return []


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="List the job's artifacts",
    description="Salience overlay PNGs (the same images for every candidate), overlays.json (which image each "
    "overlay shows, with predictions) and curves.json (every measure's curves per candidate).",
    responses=problem_responses(404, 409),
)
def list_artifacts(
    job_id: str, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> ArtifactList:
    job = _finished(jobs, job_id, settings, principal.tenant)
    return ArtifactList(
        items=[{**a, "url": f"/v1/jobs/{job_id}/artifacts/{a['name']}"} for a in _artifacts(store, job)]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one artifact",
    responses={
        200: {"content": {"image/png": {}, "application/json": {}}, "description": "The artifact."},
        **problem_responses(404, 409, 410),
    },
)
def get_artifact(
    job_id: str, name: str, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    entry = next((a for a in _artifacts(store, job) if a["name"] == name), None)
    if entry is None:
        raise ProblemError(404, f"job {job_id} has no artifact {name!r}; list them at GET /v1/jobs/{job_id}/artifacts")
    try:
        data = store.read_bytes(f"results/{job['cache_key']}/artifacts/{name}")
    except NotFound as exc:
        raise ProblemError(410, f"artifact {name!r} of job {job_id} is no longer stored") from exc
    return Response(content=data, media_type=entry["media_type"])
