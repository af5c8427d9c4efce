"""The task queue's contract, shared by the API (which sends tasks by name) and the workers (which
register them): the task names and the Celery configuration, as plain data. Celery itself is imported
only by the two sides (``workers.app``, ``api.deps``), never here.

Long-task settings, after Celery's own guide: a task is acknowledged only when it finished
(``acks_late``) and re-queued when its worker process dies (``task_reject_on_worker_lost``); each
worker process reserves one task at a time (prefetch 1) so that a long job does not hold others
hostage; soft and hard time limits bound a task; Redis's visibility timeout (after which an
unacknowledged task is handed to another worker) is above the hard limit, so a task that is still
running is never delivered twice. Redeliveries are counted in the job record and bounded
(``ETM_MAX_DELIVERIES``). Every task of a job goes to ``ETM_JOB_QUEUE`` (``cpu`` or ``gpu``); a
worker consumes the queues given by ``-Q``.
"""

from __future__ import annotations

from typing import Any

from etm.settings import Settings

APP_NAME = "etm"
TASK_RUN_JOB = "etm.run_job"
TASK_RUN_SHARD = "etm.run_shard"
TASK_FINISH_JOB = "etm.finish_job"
TASK_INSPECT_MODEL = "etm.inspect_model"


def celery_config(settings: Settings) -> dict[str, Any]:
    """``Celery.conf`` for both sides (the broker and result backend are ``settings.celery_url``)."""
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for messages of workers that died whole (not only a pool process) every ~1/10 of the
        # visibility timeout instead of kombu's default of ~100 s, so they come back soon after it.
        "unacked_restore_interval": max(1, min(60, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
    }
    return dict(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_default_queue=settings.job_queue,
        task_routes={"etm.*": {"queue": settings.job_queue}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        # A Redis restart: keep reconnecting (forever) instead of exiting after 100 tries.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # Running jobs keep running through a broker reconnect (their Redis client retries; a task that
        # ends up delivered again finds its job ended or its lease held). Set explicitly: Celery warns otherwise.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_send_sent_event=False,
    )
