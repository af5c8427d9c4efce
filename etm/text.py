"""Text that every response can show: the one UTF-8 rule for names from archives, disks and requests.

A Python ``str`` may hold lone surrogates (tar's stand-in for name bytes that are not UTF-8, a JSON
``\\udcxx`` escape, ``os.listdir`` on such a name); none of them can be encoded as UTF-8, so a record or
report holding one would make every response that shows it fail.
"""

from __future__ import annotations

import re
from typing import Any

from etm.errors import BadInput

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def utf8_safe(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD: a string that JSON responses can always encode."""
    return text if is_utf8(text) else _SURROGATE.sub("\ufffd", text)


def utf8_safe_json(obj: Any) -> Any:
    """``obj`` (JSON data) with every string, keys included, made valid UTF-8 (``utf8_safe``)."""
    if isinstance(obj, str):
        return utf8_safe(obj)
    if isinstance(obj, dict):
        return {utf8_safe_json(k): utf8_safe_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [utf8_safe_json(v) for v in obj]
    return obj


def _non_utf8_at(obj: Any, where: str) -> str | None:
    """The place (``a.b[2]``) of the first string in JSON data ``obj`` that is not valid UTF-8, or None."""
    if isinstance(obj, str):
        return None if is_utf8(obj) else where or "the top level"
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{where}.{utf8_safe(str(k))}" if where else utf8_safe(str(k))
            if isinstance(k, str) and not is_utf8(k):
                return here  # the key itself
            if (found := _non_utf8_at(v, here)) is not None:
                return found
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if (found := _non_utf8_at(v, f"{where}[{i}]")) is not None:
                return found
    return None


def check_utf8(obj: Any, what: str) -> None:
    """BadInput when JSON data ``obj`` holds a string that is not valid UTF-8: stored, no response could
    ever show it (every listing would answer 500)."""
    where = _non_utf8_at(obj, "")
    if where is not None:
        raise BadInput(
            f"{what} has text that is not valid UTF-8 at {where} (a lone surrogate such as "
            "\\udcff); send names and parameters as UTF-8 text"
        )
