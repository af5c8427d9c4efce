"""The report of a finished job as one self-contained HTML page (``api.pages``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import JobId, JobsDep, PrincipalDep, SettingsDep, StoreDep
from api.pages import CSP, render_report_html
from api.problems import ProblemError, problem_responses
from api.routers.jobs import _artifacts, _finished
from api.security.auth import authenticate
from jobs.records import JobRecord
from jobs.results import ResultStore
from jobs.storage import NotFound
from jobs.view import public_job

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 403, 503), dependencies=[Depends(authenticate)]
)


def _overlays(store: Any, job: JobRecord) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """The job's overlays.json and the PNGs it names, the strategies' representatives included (what is missing
    is left out, not an error)."""
    names = {a["name"] for a in _artifacts(store, job)}
    if "overlays.json" not in names:
        return None, {}
    results, key = ResultStore(store), job.cache_key or ""
    try:
        index = json.loads(results.artifact(key, "overlays.json"))
    except (NotFound, ValueError):
        return None, {}
    images: dict[str, bytes] = {}
    for entries in [*(index.get("overlays") or {}).values(), *(index.get("strategies") or {}).values()]:
        for e in entries:
            name = e.get("name")
            if name in names and name not in images:
                try:
                    images[name] = results.artifact(key, name)
                except NotFound:
                    continue
    return index, images


@router.get(
    "/{job_id}/report.html",
    summary="The job's report as one HTML page",
    response_class=Response,
    description="The ranking, every measure with its 95% CI, salience overlays of the same images across "
    "candidates, noise and deletion curves, the stability matrices and the provenance, in one self-contained "
    "page: images are inline data: URIs, charts inline SVG; it runs no script and loads nothing.",
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The report page."},
        **problem_responses(404, 409, 410),
    },
)
def get_report_html(
    job_id: JobId, jobs: JobsDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    job = _finished(jobs, job_id, settings, principal.tenant)
    data = jobs.get_report(job.cache_key or "")
    if data is None:
        raise ProblemError(410, f"the report of job {job_id} is no longer stored; submit the job again")
    overlays, images = _overlays(store, job)
    page = render_report_html(json.loads(data), overlays=overlays, images=images, job=public_job(job))
    return Response(
        content=page.encode(),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'inline; filename="{job_id}.html"',
        },
    )
