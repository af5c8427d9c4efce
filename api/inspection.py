"""Uploads are inspected by a worker, in its sandbox: the API stages the bytes in the store, asks a
worker (task ``etm.inspect_model`` on ``ETM_INSPECT_QUEUE``) and waits for plain JSON back. The API
process never deserializes or runs a model (docs/SECURITY.md)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from api.problems import ProblemError
from etm.errors import ModelRefused
from jobs.queue import TASK_INSPECT_MODEL
from jobs.registry import Describe, Registry

log = logging.getLogger("etm.api")


def worker_describe(services: Any, registry: Registry) -> Describe:
    """A ``Registry.ingest_model`` describer that sends the staged blob to a worker and waits."""
    settings = services.settings

    def describe(path: Path, sha: str, metadata: Any) -> dict[str, Any]:
        registry.store.put_blob(path, sha)
        ok = False
        try:
            meta = metadata.model_dump(mode="json") if metadata is not None else None
            result = services.celery.send_task(
                TASK_INSPECT_MODEL, args=[sha, path.name, meta], queue=settings.inspect_queue
            )
            try:
                answer = _wait(result, settings.inspect_wait_seconds)
            except Exception as exc:  # noqa: BLE001 - no answer in time, or the broker failed
                with contextlib.suppress(Exception):
                    result.revoke()
                log.warning("model %s: no inspection answer: %s", sha[:12], exc)
                raise ProblemError(
                    503,
                    f"no worker inspected the model within {settings.inspect_wait_seconds:.0f} s "
                    "(ETM_INSPECT_WAIT_SECONDS); the workers may be busy or down (GET /readyz). Retry shortly",
                    slug="inspection-unavailable",
                    headers={"Retry-After": "10"},
                ) from exc
            if not isinstance(answer, dict):
                log.error("model %s: the inspection task failed on the worker: %r", sha[:12], answer)
                detail = "the model inspection failed on the worker; retry shortly (the worker's log says why)"
                raise ProblemError(503, detail, slug="inspection-unavailable")
            if "refused" in answer:
                raise ModelRefused(str(answer["refused"]))
            if "unavailable" in answer:
                raise ProblemError(503, str(answer["unavailable"]), slug="inspection-unavailable")
            ok = True
            return answer["description"]
        finally:
            if not ok:  # nothing half-stored: a refused upload leaves no blob behind
                registry.discard_blob(sha)

    return describe


def _wait(result: Any, timeout: float) -> Any:
    """The task's return value, polled with plain Redis reads (safe from threads); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not result.ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer within {timeout} s")
        time.sleep(0.05)
    return result.result
