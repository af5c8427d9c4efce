"""The job as clients see it: ``GET /v1/jobs/{id}`` answers it and a job's callback POSTs it.

One rendering for both, here and not in the API, because the workers send most callbacks and import
nothing from the API. Times become RFC 3339 strings, the record's internals (tenant, sequence,
delivery counts, idempotency key) stay out, and ``links`` say where the job's resources are.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from etm.timestamps import IsoTime, iso
from jobs.records import JobRecord, JobState

JobStatus = JobState


class ProgressStep(BaseModel):
    """Inside one long salience call (Score-CAM's masked passes), which the stage's count moves past only at
    the end of its batch."""

    method: str = Field(..., examples=["scorecam"])
    done: int = Field(..., description="Units done in this call (Score-CAM: masked forward passes).")
    total: int
    eta_seconds: float | None = Field(None, description="Remaining time of this call at its rate so far.")
    updated_at: IsoTime | None = None


class Progress(BaseModel):
    stage: str = Field(..., description="queued, loading, in-set, out-of-set, artifacts or done")
    done: int
    total: int
    fraction: float = Field(..., ge=0, le=1, description="Overall fraction of the job done.")
    updated_at: IsoTime | None = None
    step: ProgressStep | None = Field(None, description="While a running job is inside one long salience call.")


class JobLinks(BaseModel):
    self: str
    cancel: str
    report: str | None = None
    report_csv: str | None = None
    artifacts: str | None = None


class Job(BaseModel):
    """A job and where it stands."""

    id: str
    status: JobStatus
    created_at: IsoTime | None
    started_at: IsoTime | None
    finished_at: IsoTime | None
    updated_at: IsoTime | None
    progress: Progress
    cache_hit: bool = Field(..., description="True when the report came from the result cache.")
    cache_key: str | None
    n_images: int | None = Field(None, description="In-set images the job scores.")
    shards: int | None = Field(None, description="Shards the job was split into (null: not split).")
    queue: str | None
    cancel_requested: bool
    duration_seconds: float | None = None
    images_per_second: float | None = None
    error: dict[str, Any] | None = Field(None, description="A problem+json object when the job failed.")
    spec: dict[str, Any] | None
    callback_url: str | None = None
    callback: dict[str, Any] | None = None
    links: JobLinks


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def _links(job: JobRecord) -> JobLinks:
    base = job_path(job.id)
    if job.status != "succeeded":
        return JobLinks(self=base, cancel=f"{base}/cancel")
    return JobLinks(
        self=base, cancel=f"{base}/cancel", report=f"{base}/report", report_csv=f"{base}/report.csv",
        artifacts=f"{base}/artifacts",
    )


def _progress(job: JobRecord) -> Progress:
    fields: dict[str, Any] = {"stage": "queued", "done": 0, "total": 0, "fraction": 0.0}
    if job.progress is not None:
        fields = job.progress.model_dump(exclude_unset=True)
        if "updated_at" in fields:
            fields["updated_at"] = iso(job.progress.updated_at)
    if job.status == "running" and job.step is not None:  # inside one long salience call (workers.jobs)
        step = job.step.model_dump(exclude_unset=True)
        fields["step"] = ProgressStep(**{**step, "updated_at": iso(job.step.updated_at)})
    return Progress(**fields)


def present(job: JobRecord) -> Job:
    """The record as the API serves it; ``error.instance`` is the job's path."""
    error = {**job.error, "instance": job_path(job.id)} if job.error is not None else None
    return Job(
        id=job.id,
        status=job.status,
        created_at=iso(job.created_at),
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        updated_at=iso(job.updated_at),
        progress=_progress(job),
        cache_hit=job.cache_hit,
        cache_key=job.cache_key,
        n_images=job.n_images,
        shards=job.shards,
        queue=job.queue,
        cancel_requested=job.cancel_requested,
        duration_seconds=job.duration_seconds,
        images_per_second=job.images_per_second,
        error=error,
        spec=job.spec,
        callback_url=job.callback_url,
        callback=job.callback.model_dump() if job.callback is not None else None,
        links=_links(job),
    )


def public_job(job: JobRecord) -> dict[str, Any]:
    """The job as plain JSON: as GET shows it, without the fields its state leaves unset (no ``progress.step``
    outside a running salience call, no report links before it succeeded)."""
    return present(job).model_dump(mode="json", exclude_unset=True)


def callback_body(job: JobRecord) -> bytes:
    """What a callback POSTs: ``public_job`` as compact JSON."""
    return json.dumps(public_job(job), separators=(",", ":")).encode()
