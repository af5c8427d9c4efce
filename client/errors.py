"""Exceptions the client raises. Every error answered by the service is an ``ApiError`` carrying its
RFC 9457 problem object (``type``, ``title``, ``status``, ``detail``, ``instance``)."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://explain-to-me.dev/problems/"


class EtmError(Exception):
    """Base class of every error this client raises."""


class ApiError(EtmError):
    """The service answered with an error (a problem+json object, or something we turned into one).

    Attributes:
        status: The HTTP status.
        title: The problem's short name (``"Invalid request"``).
        detail: What went wrong this time and what to do about it.
        type: The problem type URI (``https://explain-to-me.dev/problems/...``).
        instance: The request path the problem is about.
        problem: The whole problem object as the service sent it (validation errors add ``errors``).
        retry_after: Seconds the service asked us to wait (``Retry-After``), when it said.
    """

    def __init__(self, problem: dict[str, Any], retry_after: float | None = None) -> None:
        self.problem = dict(problem)
        self.status = int(problem.get("status") or 0)
        self.title = str(problem.get("title") or "Error")
        self.detail = str(problem.get("detail") or "")
        self.type = str(problem.get("type") or "about:blank")
        self.instance = problem.get("instance")
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def slug(self) -> str:
        """The last part of ``type`` (``"job-not-finished"``, ``"not-found"``...)."""
        return self.type.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}" if self.detail else f"{self.status} {self.title}"


class ConnectionFailed(EtmError):
    """The service could not be reached (after the retries the policy allows)."""


class JobFailed(EtmError):
    """A job ended ``failed`` or ``canceled``; ``job`` is its final record, ``problem`` its error."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.problem: dict[str, Any] = dict(job.error or {})
        self.title = str(self.problem.get("title") or job.status)
        self.detail = str(self.problem.get("detail") or "")
        self.status = self.problem.get("status")
        why = f": {self.title}: {self.detail}" if self.detail else ""
        super().__init__(f"job {job.id} {job.status}{why}")


class WaitTimeout(EtmError):
    """``wait`` gave up before the job ended; ``job`` is the last record seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(
            f"job {job.id} still {job.status} ({job.progress.fraction:.0%} done) after {timeout:g} s; "
            "it keeps running: wait again or cancel it"
        )
