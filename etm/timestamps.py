"""Time stamps of stored records: seconds since the epoch in, RFC 3339 UTC out."""

from __future__ import annotations

import time


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
