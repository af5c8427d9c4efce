"""The FastAPI application: ``create_app(settings)``; ``api.main:app`` is the one uvicorn serves."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api import offline_docs, problems
from api.deps import Services
from api.guard import RequestGuard
from api.openapi_doc import operation_id, refine
from api.routers import datasets, families, health, jobs, leaderboards, models, report_html
from api.security.auth import warn_auth_off
from etm.settings import Settings

DESCRIPTION = """\
Scores image classifiers with salience-based explainability measures.

Upload models (`POST /v1/models`, ONNX or torch.export `.pt2`) and datasets (`POST /v1/datasets`, a zip
or tar archive), or use the built-ins (`GET /v1/families`, datasets `builtin:*`). Submit a job
(`POST /v1/jobs`), poll it (`GET /v1/jobs/{id}`), then read its report (`/report`, versioned JSON;
`/report.csv`, per image) and artifacts (`/artifacts`). Every error is `application/problem+json`
(RFC 9457).

Access: every `/v1` operation needs `Authorization: Bearer <API key>` (operators make keys with
`etm-admin keys create --tenant <tenant>`); models, datasets, jobs and reports are visible only to the
key's tenant (another tenant's id answers 404). Uploads and job submissions are rate limited per key
(429 with `Retry-After`). With `ETM_AUTH=off` (the `make run` default, loopback only) no key is needed.
`/healthz`, `/readyz`, `/metrics` and the documentation are open.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Import what job admission checks (measure and method parameters) in the background, so that the first
    # job does not wait for torch. Never the model loaders: the API does not load models (docs/SECURITY.md).
    threading.Thread(target=_warm_up, name="etm-warm-up", daemon=True).start()
    yield


def _warm_up() -> None:
    try:
        from api.security.keys import dummy_hash

        dummy_hash()  # an argon2 hash: made here, not on the event loop or in the first unknown key's request
        from etm.measures import MEASURES  # noqa: F401
        from etm.salience.registry import method_names

        method_names()
    except Exception:  # noqa: BLE001 - only a warm-up; the real import reports problems
        logging.getLogger("etm.api").exception("warm-up import failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = FastAPI(
        title="Explain-to-Me",
        version="1.0.0",
        summary="Salience-based explainability measures for image classifiers, as a service.",
        contact={"name": "Explain-to-Me maintainers (docs/SERVICE.md)"},
        description=DESCRIPTION,
        lifespan=_lifespan,
        servers=[{"url": "/", "description": "This service (the host and port you reached it at)"}],
        generate_unique_id_function=operation_id,
        docs_url=None,  # Swagger UI and ReDoc from the package's own files: api/offline_docs.py
        redoc_url=None,
        openapi_tags=[
            {"name": "datasets", "description": "Image datasets (archives) and built-in datasets."},
            {"name": "health", "description": "Liveness, readiness, metrics."},
            {"name": "jobs", "description": "Evaluation jobs, their reports and artifacts."},
            {"name": "models", "description": "Model files and built-in model families."},
        ],
    )
    app.state.services = Services(settings)
    if settings.auth == "off":
        warn_auth_off("the API")
    problems.install(app)
    for r in (jobs.router, report_html.router, leaderboards.router, models.router, families.router, datasets.router,
              health.router):
        app.include_router(r)
    # Runs before FastAPI reads a body: authenticates every /v1 request and bounds JSON bodies (api/guard.py).
    app.add_middleware(RequestGuard, services=app.state.services)
    _refined_openapi(app)
    offline_docs.install(app)
    return app


def _refined_openapi(app: FastAPI) -> None:
    """Serve the document as ``api.openapi_doc.refine`` completes it (security, problems, report schema, headers)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
