"""RFC 9457 problem objects, and the one table that says which problem an exception is.

The workers record a failed job's ``error`` with ``problem_for``; the API's exception handlers answer with
the same rows (``kind_of``), so an exception reads the same whether a request or a job met it. A row names
an exception class; the most specific class in an exception's MRO wins, as with ``except``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from etm.errors import BadInput, ModelRuntimeError
from etm.sandbox import SandboxCrashed, SandboxTimeout, SandboxUnavailable
from etm.sandbox.files import UnsafeOutput
from jobs.errors import EnqueueFailed, IdempotencyKeyPending, IdempotencyKeyReused, TimeLimit, WorkerLost
from jobs.webhooks import CallbackRefused

PROBLEM_BASE = "https://explain-to-me.dev/problems/"


def problem(slug: str, title: str, status: int, detail: str, instance: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem object (as served with ``application/problem+json``)."""
    out: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance is not None:
        out["instance"] = instance
    return out


@dataclass(frozen=True)
class Kind:
    """A row of the table. ``None`` takes the exception class's own: ``status`` (else 422), ``slug`` (its name,
    lowercased) and ``title`` (its ``title``). ``detail`` words the detail (default: the exception's message)."""

    status: int | None
    slug: str | None
    title: str | None
    detail: Callable[[BaseException], str] | None = None
    retry_after: int | None = None  # seconds, for the answer's Retry-After


def _validation_detail(exc: BaseException) -> str:
    assert isinstance(exc, ValidationError)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


_REDIS_DOWN = Kind(
    503, "redis-unavailable", "Service unavailable",
    lambda _: "the job database (Redis) cannot be reached; retry shortly. Operators: check ETM_REDIS_URL and Redis",
    retry_after=5,
)
_CRASHED = Kind(422, "model-crashed", SandboxCrashed.title)
INTERNAL = Kind(500, "internal", "Internal error")

PROBLEMS: dict[type[BaseException], Kind] = {
    ValidationError: Kind(422, "invalid-spec", "Invalid job spec", _validation_detail),
    BadInput: Kind(None, None, None),  # each subclass is its own problem (UploadTooLarge: 413 uploadtoolarge)
    ModelRuntimeError: Kind(422, "model-runtime-error", None),
    SandboxTimeout: Kind(504, "model-time-limit", SandboxTimeout.title),
    SandboxCrashed: _CRASHED,
    UnsafeOutput: _CRASHED,
    SandboxUnavailable: Kind(
        503, "sandbox-unavailable", "Model sandbox unavailable", lambda e: f"{e}; operators: see docs/SECURITY.md"
    ),
    TimeLimit: Kind(504, "time-limit", "Time limit exceeded"),
    WorkerLost: Kind(500, "worker-lost", "Worker lost"),
    CallbackRefused: Kind(422, "callback-refused", "Callback URL refused"),
    IdempotencyKeyReused: Kind(422, "idempotency-key-reused", "Invalid request"),
    IdempotencyKeyPending: Kind(409, "conflict", "Conflict"),
    EnqueueFailed: Kind(503, "enqueue-failed", "Could not queue the job", retry_after=5),
    redis.ConnectionError: _REDIS_DOWN,
    redis.TimeoutError: _REDIS_DOWN,
    Exception: INTERNAL,
}

# Allocation failures (``etm.models.base``: ModelOutOfMemory, and PyTorch's and ONNX Runtime's own, told by
# their message) are one more row, matched by that predicate: the module imports torch, which the API never
# loads, so it is imported only when a worker classifies an error.
OUT_OF_MEMORY = Kind(507, "out-of-memory", "Out of memory")


# The caller's mistakes and the jobs layer's own failures: never an allocation failure of a runtime.
_NOT_RUNTIME = (
    BadInput, ValidationError, TimeLimit, WorkerLost, CallbackRefused, IdempotencyKeyReused, IdempotencyKeyPending,
    EnqueueFailed, redis.RedisError,
)


def _oom_detail(exc: BaseException) -> str:
    from etm.models.base import ModelOutOfMemory

    if isinstance(exc, ModelOutOfMemory):
        return str(exc)
    return (
        f"the worker ran out of memory outside the per-batch retry ({type(exc).__name__}: {str(exc)[:300]}); "
        "use a worker with more memory or a smaller job (max_images, fewer candidates)"
    )


def _out_of_memory(exc: BaseException) -> bool:
    from etm.models.base import ModelOutOfMemory, is_out_of_memory

    if isinstance(exc, _NOT_RUNTIME):  # whatever their message says
        return False
    return isinstance(exc, ModelOutOfMemory) or is_out_of_memory(exc)


@functools.cache
def _row(cls: type[BaseException]) -> type[BaseException] | None:
    return next((c for c in cls.__mro__ if c in PROBLEMS), None)


def row_of(exc: BaseException) -> Kind:
    """The table's row for ``exc`` (not the out-of-memory row: see ``problem_for``)."""
    row = _row(type(exc))
    return PROBLEMS[row] if row is not None else INTERNAL


def kind_of(exc: BaseException) -> tuple[int, str, str]:
    """``(status, slug, title)`` of ``exc`` by the table."""
    return _resolve(row_of(exc), exc)


def _resolve(kind: Kind, exc: BaseException) -> tuple[int, str, str]:
    status = kind.status if kind.status is not None else int(getattr(exc, "status", 422))
    slug = kind.slug or type(exc).__name__.lower()
    title = kind.title or getattr(exc, "title", None) or "Error"
    return status, slug, title


def detail_of(exc: BaseException) -> str:
    kind = row_of(exc)
    return kind.detail(exc) if kind.detail is not None else str(exc)


def problem_for(exc: BaseException) -> dict[str, Any]:
    """The problem object a job's error is recorded as (``jobs.view`` adds the job's path as ``instance``)."""
    if _out_of_memory(exc):
        status, slug, title = _resolve(OUT_OF_MEMORY, exc)
        return problem(slug, title, status, _oom_detail(exc))
    status, slug, title = kind_of(exc)
    if row_of(exc) is INTERNAL:  # no traceback for the client: the worker's log has it
        detail = f"the worker failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]}); see the worker's log"
    else:
        detail = detail_of(exc)
    return problem(slug, title, status, detail)
