"""Celery tasks: thin wrappers around ``workers.jobs``. All take ``job_id`` as a keyword.

- ``etm.run_job(job_id)``: cache check, then the whole evaluation here, or a chord of
  ``etm.run_shard`` tasks (any worker may take each) whose body is ``etm.finish_job``.
- ``etm.run_shard(job_id, index, count)``: the in-set pass over one batch-aligned shard.
- ``etm.finish_job(results, job_id, count)``: merge, out-of-set pass, summary, artifacts.
- ``etm.inspect_model(sha, filename, metadata)``: the sandboxed checks and probe of an upload, for the API
  (queue ``ETM_INSPECT_QUEUE``); its result is plain JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, chord, shared_task
from celery.exceptions import Ignore

from etm.settings import get_settings
from jobs.queue import TASK_FINISH_JOB, TASK_INSPECT_MODEL, TASK_RUN_JOB, TASK_RUN_SHARD
from workers.jobs import WorkerEnv, fail, finish_job, job_problem, run_job, run_shard

log = logging.getLogger("etm.worker")
_ENV: WorkerEnv | None = None


def env() -> WorkerEnv:
    """The process's worker environment (Redis client, store, per-process model cache)."""
    global _ENV
    if _ENV is None:
        _ENV = WorkerEnv.from_settings(get_settings())
    return _ENV


class JobTask(Task):
    """Ends the job when a task dies in a way the task body could not catch (hard time limit)."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, WorkerLostError):
            return  # re-queued (task_reject_on_worker_lost); the delivery count bounds retries
        job_id = (kwargs or {}).get("job_id")
        if job_id:
            try:
                fail(env(), job_id, job_problem(exc))
            except Exception:  # noqa: BLE001 - never raise from a failure handler
                log.exception("job %s: could not record the failure", job_id)


@shared_task(name=TASK_RUN_JOB, bind=True, base=JobTask, ignore_result=True)
def run_job_task(self: Task, job_id: str) -> None:
    # Shards follow the job to the queue it came from (a GPU job's shards go to GPU workers).
    queue = (self.request.delivery_info or {}).get("routing_key") or env().settings.job_queue

    def dispatch(jid: str, count: int) -> None:
        header = [run_shard_task.s(job_id=jid, index=i, count=count).set(queue=queue) for i in range(count)]
        chord(header)(finish_job_task.s(job_id=jid, count=count).set(queue=queue))

    run_job(env(), job_id, dispatch)


@shared_task(name=TASK_RUN_SHARD, bind=True, base=JobTask)
def run_shard_task(self: Task, job_id: str, index: int, count: int) -> int:
    if not run_shard(env(), job_id, index, count):
        # A duplicate of a shard still running elsewhere: Ignore acks it without counting it towards the
        # chord, which would otherwise start finish_job before the real shard is done.
        raise Ignore()
    return index


@shared_task(name=TASK_FINISH_JOB, bind=True, base=JobTask, ignore_result=True)
def finish_job_task(self: Task, results: Any = None, *, job_id: str, count: int) -> None:
    finish_job(env(), job_id, count)


# Its own time limits, not the jobs' (ETM_TASK_*): the sandbox's budget plus room for fetching the blob.
_INSPECT_SOFT = get_settings().sandbox_inspect_seconds + 60


@shared_task(name=TASK_INSPECT_MODEL, acks_late=False, soft_time_limit=_INSPECT_SOFT, time_limit=_INSPECT_SOFT + 30)
def inspect_model_task(sha: str, filename: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    # Not acks_late: an upload waits for the answer; a redelivery after a worker crash would answer no one.
    from workers.inspection import inspect_upload

    return inspect_upload(env(), sha, filename, metadata)
