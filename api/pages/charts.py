"""The geometry of the page's inline SVG charts (templates/partials/charts.html.j2 draws them).

Coordinates come back as strings with one decimal, as the SVG attributes take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.pages.formatting import finite, fmt, nice_ticks, tick_label

Point = tuple[float, Any, Any, Any]  # x, value, CI low, CI high (the last three may be missing)


def _f(v: float) -> str:
    return f"{v:.1f}"


def forest(rows: Sequence[tuple[str, str, Any, Any]]) -> dict[str, Any] | None:
    """Each candidate's value and 95% CI on one shared axis: ``rows`` are (candidate, colour, value, ci)."""
    pts = []
    for cand, color, v, ci in rows:
        lo = ci[0] if isinstance(ci, (list, tuple)) and finite(ci[0]) else v
        hi = ci[1] if isinstance(ci, (list, tuple)) and finite(ci[1]) else v
        if finite(v):
            pts.append((cand, color, float(v), float(lo), float(hi)))
    if not pts:
        return None
    lo = min(p[3] for p in pts)
    hi = max(p[4] for p in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    w, row = 200, 12
    h = row * len(pts) + 6

    def x(val: float) -> str:
        return _f(4 + (w - 8) * (val - lo) / (hi - lo))

    return {
        "w": w, "h": h, "zero": x(0) if lo < 0 < hi else None,
        "rows": [{"cand": c, "color": col, "y": 6 + i * row, "x_lo": x(a), "x_hi": x(b), "x_v": x(v),
                  "title": f"{c}: {fmt(v)} (95% CI {fmt(a)} … {fmt(b)})"}
                 for i, (c, col, v, a, b) in enumerate(pts)],
    }


def line_chart(series: Sequence[tuple[str, str, Sequence[Point]]], title: str, xlabel: str,
               ylabel: str = "") -> dict[str, Any] | None:
    """A line (and CI band) per candidate: ``series`` are (candidate, colour, points)."""
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [v for _, _, pts in series for p in pts for v in (p[1], p[2], p[3]) if finite(v)]
    if not xs or not ys:
        return None
    w, h, ml, mr, mt, mb = 340, 220, 60 if ylabel else 48, 12, 28, 40
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.06
    y0, y1 = y0 - pad, y1 + pad
    if x1 == x0:
        x1 = x0 + 1

    def px(v: float) -> float:
        return ml + (w - ml - mr) * (v - x0) / (x1 - x0)

    def py(v: float) -> float:
        return mt + (h - mt - mb) * (1 - (v - y0) / (y1 - y0))

    yt = nice_ticks(y0, y1, 5)
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1
    xt = nice_ticks(x0, x1, 6)
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1
    lines = []
    for cand, col, pts in series:
        band = [(p[0], p[2], p[3]) for p in pts if finite(p[2]) and finite(p[3])]
        polygon = None
        if len(band) >= 2:
            upper = " ".join(f"{px(a):.1f},{py(hi):.1f}" for a, _, hi in band)
            lower = " ".join(f"{px(a):.1f},{py(lo):.1f}" for a, lo, _ in reversed(band))
            polygon = f"{upper} {lower}"
        line = [p for p in pts if finite(p[1])]
        lines.append({
            "color": col, "band": polygon,
            "points": " ".join(f"{px(a):.1f},{py(v):.1f}" for a, v, _, _ in line),
            "dots": [{"x": _f(px(a)), "y": _f(py(v)),
                      "title": f"{cand}: {fmt(v)} at {fmt(a)} (95% CI {fmt(lo)} … {fmt(hi)})"}
                     for a, v, lo, hi in line],
        })
    cy = (mt + h - mb) / 2
    return {
        "w": w, "h": h, "ml": ml, "right": w - mr, "mt": mt, "bottom": h - mb, "title": title,
        "yticks": [{"y": _f(py(t)), "ty": _f(py(t) + 3.5), "label": tick_label(t, ystep)} for t in yt],
        "xticks": [{"x": _f(px(t)), "label": tick_label(t, xstep)} for t in xt],
        "xlabel": xlabel, "xl_x": _f((ml + w - mr) / 2), "ylabel": ylabel, "cy": _f(cy), "series": lines,
    }


def _heat(v: float) -> str:
    """Diverging colour for a similarity in [-1, 1]: red below 0, white at 0, blue towards 1."""
    t = max(-1.0, min(1.0, v))
    if t >= 0:
        a, b = (247, 247, 247), (33, 102, 172)
    else:
        a, b, t = (247, 247, 247), (178, 24, 43), -t
    r, g, bl = (round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    return f"rgb({r},{g},{bl})"


def heatmap(mat: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """A run x run similarity matrix as coloured cells (values printed when the cells are big enough)."""
    k = len(mat)
    if k == 0:
        return None
    cell, lab = 46 if k <= 6 else 40 if k <= 8 else 26, 46
    size = lab + cell * k + 4
    rows = []
    for i in range(k):
        cells = []
        for j in range(k):
            v = mat[i][j]
            cells.append({
                "x": lab + j * cell, "y": lab + i * cell, "diag": i == j,
                "fill": _heat(float(v)) if finite(v) else "#ddd", "title": f"run {i} vs run {j}: {fmt(v)}",
                "text": (f"{float(v):.2f}" if finite(v) else "n/a") if cell >= 40 else None,
                "tx": _f(lab + j * cell + cell / 2 - 0.5), "ty": _f(lab + i * cell + cell / 2 + 4),
                "ink": "#fff" if finite(v) and abs(float(v)) > 0.55 else "#1d2330",
            })
        centre = lab + i * cell + cell / 2
        rows.append({"i": i, "lx": lab - 6, "ly": _f(centre + 4), "cx": _f(centre), "cy": lab - 8, "cells": cells})
    return {"w": size, "h": size, "side": cell - 1, "rows": rows, "card_w": max(size, 240) + 34}


def _jet(v: float) -> str:
    """The overlays' colour ramp (etm.artifacts.colormap: blue low, red high) for a value in [0, 1]."""
    t = max(0.0, min(1.0, v))
    r, g, b = (max(0.0, min(1.0, 1.5 - abs(4 * t - c))) for c in (3, 2, 1))
    return f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})"


def map_heat(grid: Sequence[Sequence[Any]], side: int = 84) -> dict[str, Any] | None:
    """A small salience map (e.g. a cluster's mean map) as coloured cells, scaled to its own peak."""
    vals = [float(v) for row in grid for v in row if finite(v)]
    if not grid or not vals:
        return None
    h, w = len(grid), len(grid[0])
    top = max(vals) or 1.0
    cell = side / max(h, w)
    cells = [
        {"x": _f(j * cell), "y": _f(i * cell), "fill": _jet(float(v) / top) if finite(v) else "#ddd",
         "title": f"cell ({i}, {j}): {fmt(v)}"}
        for i, row in enumerate(grid) for j, v in enumerate(row)
    ]
    return {"w": _f(w * cell), "h": _f(h * cell), "side": _f(cell + 0.3), "cells": cells}


def scatter(xs: Sequence[Any], ys: Sequence[Any], colors: Sequence[str], titles: Sequence[str],
            size: int = 220) -> dict[str, Any] | None:
    """Points of a 2-D embedding, each in its cluster's colour; the axes carry no units (only positions matter)."""
    pts = [(float(x), float(y), c, t) for x, y, c, t in zip(xs, ys, colors, titles, strict=True)
           if finite(x) and finite(y)]
    if not pts:
        return None
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    m = 8

    def px(v: float) -> str:
        return _f(m + (size - 2 * m) * (v - x0) / sx)

    def py(v: float) -> str:
        return _f(size - m - (size - 2 * m) * (v - y0) / sy)

    return {"w": size, "h": size, "dots": [{"x": px(x), "y": py(y), "color": c, "title": t} for x, y, c, t in pts]}
