"""How the client retries: the policy for 429/503 answers and connection failures, the event an ``on_retry``
callback sees, and ``Retry-After`` read as seconds."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries 429/503 answers and connection failures.

    Attributes:
        attempts: Tries in all (1 = never retry).
        max_retry_after: The longest single wait, in seconds, whatever ``Retry-After`` asks for.
        backoff: First wait when the service gave no ``Retry-After`` (doubles each try, with jitter).
        max_backoff: Cap of that exponential wait.
        budget: Seconds one call may spend waiting between tries, in all.
    """

    attempts: int = 5
    max_retry_after: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 8.0
    budget: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each wait: what failed and how long the client waits."""

    method: str
    url: str
    attempt: int  # the try that failed, from 1
    status: int | None  # None for a connection failure
    reason: str
    wait: float


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
