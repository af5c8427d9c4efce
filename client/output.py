"""What ``etm`` writes: results on stdout (tables, JSON), messages, warnings and progress on stderr, so
``JOB=$(etm jobs submit ...)`` captures just the id."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client.types import Job


def err(msg: str) -> None:
    print(f"etm: {msg}", file=sys.stderr)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def print_warnings(warnings: Sequence[dict[str, Any]]) -> None:
    """Likely metadata mistakes on stderr, each with its fix (a model's or a report's ``warnings``;
    docs/MODELS.md)."""
    for w in warnings:
        where = f"candidate {w['candidate']!r} run {w['run']}: " if "candidate" in w else ""
        err(f"warning: {where}{w.get('message', '')} [{w.get('code', '')}]\n    fix: {w.get('fix', '')}")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(h) for h in header]] + [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def num(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def ci_text(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{num(ci[0])}, {num(ci[1])}]"
    return ""


# -- progress --------------------------------------------------------------------------------------


def _step_text(job: Job) -> str:
    """Inside one long salience call: its passes and the remaining time (``progress.step``)."""
    step = (job.raw.get("progress") or {}).get("step") if hasattr(job, "raw") else None
    if not isinstance(step, dict):
        return ""
    eta = step.get("eta_seconds")
    left = f", {eta:.0f} s left" if isinstance(eta, (int, float)) else ""
    return f" ({step.get('method')} {step.get('done')}/{step.get('total')} passes{left})"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: a time span as people read it."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Timing:
    """Elapsed time since the first update, and an ETA from the progress made since then (``fraction`` in
    [0, 1]): the rate of this wait, so a job that was half done when we started is not credited with it."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        import time

        self.clock = clock or time.monotonic
        self.start: float | None = None
        self.first = 0.0

    def text(self, fraction: float, ended: bool = False) -> str:
        now = self.clock()
        if self.start is None:
            self.start, self.first = now, fraction
        elapsed = now - self.start
        out = f"elapsed {duration(elapsed)}"
        if not ended and fraction > self.first and elapsed > 0:
            out += f", ETA {duration(elapsed * (1 - fraction) / (fraction - self.first))}"
        return out


def progress_printer(
    job_id: str, stream: Any = None, clock: Callable[[], float] | None = None
) -> tuple[Callable[[Job], None], Callable[[], None]]:
    """A service job's progress on stderr (tqdm on a terminal; one line per stage/10% step in logs), with the
    elapsed time and an ETA on both."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    state: dict[str, Any] = {"bar": None, "last": None}
    timing = Timing(clock)

    if tty:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency of the project
            tty = False

    def update(job: Job) -> None:
        p = job.progress
        pct = round(p.fraction * 100)
        when = timing.text(p.fraction, ended=job.status in ("succeeded", "failed", "canceled"))
        if tty:
            bar = state["bar"]
            if bar is None:
                bar = state["bar"] = tqdm(total=100, file=stream, unit="%", desc=job_id, leave=True,
                                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
            bar.n = pct
            bar.set_postfix_str(f"{job.status} {p.stage} {p.done}/{p.total}{_step_text(job)}, {when}", refresh=False)
            bar.refresh()
            return
        key = (job.status, p.stage, pct // 10)
        if key != state["last"]:
            state["last"] = key
            where = job.status if p.stage in (job.status, "done") else f"{job.status} {p.stage} {p.done}/{p.total}"
            print(f"{job_id}: {where} ({pct}%, {when})", file=stream, flush=True)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close

