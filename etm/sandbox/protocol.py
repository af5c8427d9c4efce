"""The line protocol between the sandboxed child and its parent: one JSON object per line.

``{"event": "progress", "stage": str, "done": int, "total": int}``
``{"event": "result", "payload": {...}}``: the child finished; its files are in the scratch folder.
``{"event": "error", "kind": str, "message": str, "smallest": int?, "rows": [int]?}``

The parent trusts none of it: a malformed line is dropped, an error is rebuilt only as one of the
classes in ``_KINDS`` (anything else becomes a ``ModelRuntimeError``), messages are cut to a length.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from etm.errors import BadInput, DatasetError, MethodUnavailable, ModelRefused, ModelRuntimeError

MAX_MESSAGE = 2000


def _kinds() -> dict[str, type[Exception]]:
    from etm.models.base import ModelOutOfMemory, OutputNotFinite

    return {
        "ModelRefused": ModelRefused,
        "DatasetError": DatasetError,
        "MethodUnavailable": MethodUnavailable,
        "BadInput": BadInput,
        "ModelRuntimeError": ModelRuntimeError,
        "OutputNotFinite": OutputNotFinite,
        "ModelOutOfMemory": ModelOutOfMemory,
        "FileNotFoundError": FileNotFoundError,
    }


def emit(obj: dict[str, Any]) -> None:
    """Child side: write one message (stdout is the protocol channel; logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def error_message(exc: BaseException) -> dict[str, Any]:
    """Child side: the message for an exception of the domain (the nearest known class by MRO)."""
    kinds = _kinds()
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in kinds), "ModelRuntimeError")
    msg: dict[str, Any] = {"event": "error", "kind": kind, "message": str(exc)[:MAX_MESSAGE]}
    if kind == "ModelRuntimeError" and type(exc).__name__ not in kinds:
        msg["message"] = f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]
    if hasattr(exc, "smallest"):
        msg["smallest"] = int(exc.smallest)
    if hasattr(exc, "rows"):
        msg["rows"] = [int(r) for r in exc.rows][:10_000]
    return msg


def parse_line(line: bytes) -> dict[str, Any] | None:
    """Parent side: a well-formed message, or None."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict):
        return None
    event = msg.get("event")
    if event == "progress":
        ok = isinstance(msg.get("stage"), str) and all(
            isinstance(msg.get(k), int) and not isinstance(msg.get(k), bool) for k in ("done", "total")
        )
        return {"event": event, "stage": msg["stage"][:64], "done": msg["done"], "total": msg["total"]} if ok else None
    if event == "result":
        return msg if isinstance(msg.get("payload"), dict) else None
    if event == "error" and isinstance(msg.get("kind"), str) and isinstance(msg.get("message"), str):
        return msg
    return None


def rebuild_error(msg: dict[str, Any]) -> Exception:
    """Parent side: the exception the child reported, as one of the known classes."""
    from etm.models.base import ModelOutOfMemory, OutputNotFinite

    cls = _kinds().get(msg["kind"], ModelRuntimeError)
    text = msg["message"][:MAX_MESSAGE]
    if cls is ModelOutOfMemory:
        return ModelOutOfMemory(text, int(msg.get("smallest", 1)))
    if cls is OutputNotFinite:
        rows = msg.get("rows")
        return OutputNotFinite(text, [int(r) for r in rows] if isinstance(rows, list) else [])
    return cls(text)
