"""Numbers for people on the report page: values, CIs and axis ticks."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any) -> str:
    """A number for people: 3 significant digits (at least 3 decimals), scientific when tiny or huge, a
    dash when missing."""
    if not finite(x):
        return "—"
    x = float(x)
    if x == 0:
        return "0"
    ax = abs(x)
    if ax < 1e-4 or ax >= 1e5:
        return f"{x:.2e}"
    if ax >= 100:
        return f"{x:,.1f}"
    return f"{x:.{max(3, 2 - math.floor(math.log10(ax)))}f}"


def ci_text(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and finite(ci[0]) and finite(ci[1]):
        return f"{fmt(ci[0])} … {fmt(ci[1])}"
    return "no CI"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out, t = [], start
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out


def tick_label(t: float, step: float) -> str:
    if t == 0:
        return "0"
    if abs(t) < 1e-3 or abs(t) >= 1e5:
        return f"{t:.1e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    if decimals < 8 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{t:.{decimals}f}"
