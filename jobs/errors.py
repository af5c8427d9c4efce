"""The jobs layer's own failures; ``jobs.problems`` says which problem each one is."""

from __future__ import annotations


class TimeLimit(Exception):
    """A job's task ran past its time limit (the workers raise it for Celery's time-limit exceptions)."""

    @classmethod
    def of(cls, soft: float, hard: float) -> TimeLimit:
        return cls(
            f"the job ran past the task time limit ({soft} s, ETM_TASK_SOFT_TIME_LIMIT; killed at {hard} s, "
            "ETM_TASK_TIME_LIMIT); lower ETM_SHARD_IMAGES so that it is split into smaller shards, use "
            "max_images, or raise the limits"
        )


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was bound to a different job body."""


class IdempotencyKeyPending(Exception):
    """The job bound to the Idempotency-Key is still being created by a concurrent request."""


class EnqueueFailed(Exception):
    """The broker refused the job's task; the job was marked failed."""


class WorkerLost(Exception):
    """A part of the job was delivered more than ETM_MAX_DELIVERIES times without finishing."""
