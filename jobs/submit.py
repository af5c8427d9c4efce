"""Submitting a job (``POST /v1/jobs`` without the HTTP): check the spec against the tenant's registry,
replay an ``Idempotency-Key``, answer a cached result at once, else store a ``queued`` record and send
``etm.run_job`` through the ``send`` the caller injects (the API's Celery client; a test's list).

Raises the jobs layer's exceptions, which ``jobs.problems`` turns into problems: ``BadInput`` (the spec),
``CallbackRefused``, ``IdempotencyKeyReused``, ``IdempotencyKeyPending``, ``EnqueueFailed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from etm.settings import Settings
from etm.spec import EvaluationSpec
from jobs.admission import check_spec
from jobs.errors import EnqueueFailed, IdempotencyKeyPending, IdempotencyKeyReused
from jobs.job_store import JobStore
from jobs.problems import problem_for
from jobs.queue import TASK_RUN_JOB
from jobs.records import JobRecord, Progress, new_job_id
from jobs.registry import Registry
from jobs.webhooks import check_callback_url

log = logging.getLogger("etm.jobs")


class Send(Protocol):
    """Sends task ``name`` with keyword arguments ``kwargs`` to ``queue`` under ``task_id``."""

    def __call__(self, name: str, kwargs: dict[str, Any], *, queue: str, task_id: str) -> None: ...


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    replayed: bool  # the Idempotency-Key named an earlier job, which this is

    @property
    def cached(self) -> bool:
        return self.job.cache_hit and not self.replayed


def body_sha256(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(jobs: JobStore, prior: dict[str, str], body_sha: str, key: str) -> Submitted:
    if prior["body_sha256"] != body_sha:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for a different job body (job {prior['job_id']}); use a new key "
            "for a new job"
        )
    for _ in range(40):  # a concurrent request with the same key may still be creating the job
        job = jobs.get(prior["job_id"])
        if job is not None:
            return Submitted(job, replayed=True)
        time.sleep(0.05)
    raise IdempotencyKeyPending(f"job {prior['job_id']} for this Idempotency-Key is still being created; retry")


def submit(
    body: dict[str, Any],
    *,
    tenant: str,
    settings: Settings,
    jobs: JobStore,
    registry: Registry,
    send: Send,
    idempotency_key: str | None = None,
) -> Submitted:
    """Submit ``body`` (an EvaluationSpec's JSON plus ``callback_url``) for ``tenant``; ``registry`` is the
    tenant's view. A request that fails its checks binds no Idempotency-Key."""
    body_sha = body_sha256(body)
    if idempotency_key:
        prior = jobs.idempotency_binding(idempotency_key, tenant)
        if prior is not None:
            return _replay(jobs, prior, body_sha, idempotency_key)
    callback_url = body.get("callback_url")
    spec = EvaluationSpec.model_validate({k: v for k, v in body.items() if k != "callback_url"})
    checked = check_spec(registry, spec)
    if callback_url:  # refused now, not when the job ends (unsigned service, disallowed host)
        check_callback_url(callback_url, settings)
    job_id = new_job_id()
    if idempotency_key:
        prior = jobs.claim_idempotency_key(idempotency_key, body_sha, job_id, settings.idempotency_ttl_seconds, tenant)
        if prior is not None:
            return _replay(jobs, prior, body_sha, idempotency_key)
    t = time.time()
    cached = settings.result_cache and (
        jobs.has_report_copy(checked.cache_key) or jobs.results.complete(checked.cache_key)
    )
    job = jobs.create(
        JobRecord(
            id=job_id,
            tenant=tenant,
            status="succeeded" if cached else "queued",
            created_at=t,
            updated_at=t,
            started_at=None,
            finished_at=t if cached else None,
            spec=spec.canonical(),
            callback_url=callback_url,
            cache_key=checked.cache_key,
            cache_hit=cached,
            n_images=checked.n_images,
            shards=None,
            queue=settings.job_queue,
            idempotency_key=idempotency_key,
            cancel_requested=False,
            error=None,
            progress=Progress.finished(t) if cached else Progress.at("queued", 0, 0, 0.0, t),
        )
    )
    if not cached:
        _enqueue(jobs, job, send)
    return Submitted(job, replayed=False)


def _enqueue(jobs: JobStore, job: JobRecord, send: Send) -> None:
    try:
        send(TASK_RUN_JOB, {"job_id": job.id}, queue=job.queue or "", task_id=f"{job.id}:run")
    except Exception as exc:  # noqa: BLE001 - the broker refused: the job must not stay queued forever
        log.exception("job %s: could not enqueue", job.id)
        detail = f"the job could not be queued ({type(exc).__name__}); retry shortly"
        t = time.time()
        jobs.transition(
            job.id,
            "failed",
            ("queued",),
            finished_at=t,
            updated_at=t,
            error=problem_for(EnqueueFailed(detail)),
        )
        jobs.snapshot(job.id)
        raise EnqueueFailed(detail) from exc
