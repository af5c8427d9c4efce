"""Typed parameters, declared once: what a salience method's ``method_params`` or a measure's ``measure_params``
may hold. The registries check a job's parameters against these declarations when it is submitted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One parameter of a salience method, declared once: its default, its type and what it may be.

    ``kind`` is ``int`` (a JSON integer, not a boolean), ``float`` (any finite JSON number) or ``str``
    (one of ``choices``). Numbers lie in ``[lo, hi]``; ``lo_open`` excludes ``lo`` itself. ``nullable``
    also accepts JSON null (the method says what null means).
    """

    default: Any
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def allowed(self) -> str:
        return self._allowed() + (" or null" if self.nullable else "")

    def _allowed(self) -> str:
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = "an integer" if self.kind is int else "a number"
        lo = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        if self.lo is not None and self.hi is not None:
            return f"{what} {lo} and <= {self.hi:g}"
        return f"{what} {lo}" if self.lo is not None else what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # ints compare exactly, however large
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
