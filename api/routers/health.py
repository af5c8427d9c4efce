"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.metrics import render
from api.problems import problem_responses
from api.schemas import Health
from jobs.builtins import read_status

router = APIRouter(tags=["health"], responses=problem_responses(503))


@router.get("/healthz", response_model=Health, summary="Liveness: the API process answers")
def healthz() -> Health:
    """200 while the API process answers; says nothing of Redis or the workers (that is `/readyz`)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: this instance can serve what it advertises",
    description="200 only when Redis answers, a worker consumes the job queue and the inspection queue, the "
    "artifact store answers, and (with ETM_REGISTER_BUILTINS) the built-ins are registered. Otherwise 503, with "
    "`checks` saying what is missing, e.g. `\"builtins\": \"registering (3 of 4 datasets)\"`. `/healthz` is the "
    "liveness check.",
    responses={503: {"model": Health, "description": "Not ready; `checks` says what is missing."}},
)
def readyz(services: ServicesDep) -> Response:
    s = services.settings
    checks: dict[str, object] = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
    ok = checks["redis"] == "ok"
    workers: list[str] = []
    if ok:
        consumed: set[str] = set()
        try:
            # Every worker's queues (one broadcast, 1 s): a worker of the wrong queue would take no job.
            replies = services.celery.control.inspect(timeout=1.0).active_queues() or {}
            workers = sorted(replies)
            consumed = {q["name"] for qs in replies.values() for q in qs if isinstance(q, dict) and "name" in q}
        except Exception as exc:  # noqa: BLE001
            checks["workers_error"] = f"{type(exc).__name__}: {exc}"
        missing = [q for q in dict.fromkeys((s.job_queue, s.inspect_queue)) if q not in consumed]
        checks["queues"] = "ok" if not missing else f"no worker consumes {missing}"
        ok = not missing
        if s.register_builtins:
            status = read_status(services.redis, s.key_prefix)
            if status is None:
                checks["builtins"] = (
                    "not registered (run `python -m jobs.builtins`, or set ETM_REGISTER_BUILTINS=false)"
                )
            else:
                checks["builtins"] = "ok" if status["state"] == "ready" else status["detail"]
            ok = ok and checks["builtins"] == "ok"
    checks["workers"] = workers
    try:
        services.store.exists("healthz-probe")
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["store"] = f"unreachable: {type(exc).__name__}: {exc}"
        ok = False
    body = Health(status="ready" if ok else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        **problem_responses(503),
    },
)
def metrics(services: ServicesDep) -> Response:
    """Jobs per state, queue depths, job durations and images scored, in the Prometheus text format."""
    return Response(render(services.jobs), media_type=CONTENT_TYPE_LATEST)
