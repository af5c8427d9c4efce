"""Time stamps of stored records: seconds since the epoch in, RFC 3339 UTC out."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import WithJsonSchema

# An ISO 8601 UTC time as the service writes it (``iso``), documented as ``format: date-time`` so that generated
# clients parse it; kept a string so that the JSON is byte for byte what ``iso`` wrote.
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
