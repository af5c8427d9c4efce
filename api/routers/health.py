"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.metrics import render
from api.problems import problem_responses
from api.schemas import Health

router = APIRouter(tags=["health"], responses=problem_responses(503))


@router.get("/healthz", response_model=Health, summary="Liveness: the API process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: Redis answers and at least one worker answers a ping",
    responses={503: {"model": Health, "description": "Not ready; `checks` says what is missing."}},
)
def readyz(services: ServicesDep) -> Response:
    checks: dict[str, object] = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
    workers: list[str] = []
    if checks["redis"] == "ok":
        try:
            replies = services.celery.control.ping(timeout=1.0, limit=1) or []
            workers = sorted(name for r in replies for name in r)
        except Exception as exc:  # noqa: BLE001
            checks["workers_error"] = f"{type(exc).__name__}: {exc}"
    checks["workers"] = workers
    ok = checks["redis"] == "ok" and bool(workers)
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
    return Response(render(services.jobs), media_type=CONTENT_TYPE_LATEST)
