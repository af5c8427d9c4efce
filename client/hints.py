"""The service's hints, said as ``etm`` commands: a problem's ``detail`` names API paths (``list jobs at
GET /v1/jobs``), which an ``etm`` user does not type. One table, applied to every message ``etm`` prints."""

from __future__ import annotations

import re

# Most specific first: the job paths with an id before the bare collection.
_HINTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), command)
    for pattern, command in (
        (r"(?:Poll )?GET /v1/jobs/(?P<id>[A-Za-z0-9_-]+)/artifacts", r"`etm jobs artifacts \g<id>`"),
        (r"Poll GET /v1/jobs/(?P<id>[A-Za-z0-9_-]+)", r"Wait for it with `etm jobs wait \g<id>` (or add --wait)"),
        (r"poll GET /v1/jobs/(?P<id>[A-Za-z0-9_-]+)", r"wait for it with `etm jobs wait \g<id>` (or add --wait)"),
        (r"GET /v1/jobs/(?P<id>[A-Za-z0-9_-]+)", r"`etm jobs status \g<id>`"),
        (r"GET /v1/jobs\b", "`etm jobs list`"),
        (r"(?:see )?GET /v1/models\b", "`etm models list`"),
        (r"(?:see )?GET /v1/datasets\b", "`etm datasets list`"),
        (r"GET /v1/families\b", "`etm jobs submit --family NAME` (GET /v1/families lists them)"),
        (r"POST /v1/models\b", "`etm models push`"),
        (r"POST /v1/datasets\b", "`etm datasets push`"),
    )
)


def as_commands(message: str) -> str:
    """``message`` with every API path it recommends replaced by the ``etm`` command that does it."""
    message = re.sub(r"\bat (GET|POST) /v1/", r"with \1 /v1/", message)
    for pattern, command in _HINTS:
        message = pattern.sub(command, message)
    return message
