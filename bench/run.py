"""``make bench``: the CPU set of figures, project and anchors side by side in one run.

Prints every figure as a ratio measured in this run, writes ``var/bench/results.json``, and exits
non-zero when a correctness check fails (a result disagreeing with its anchor beyond tolerance).
Speed targets are reported (``met`` yes/no), not enforced: the machine is shared.

    .venv/bin/python -m bench.run                 # everything, sized to finish in ~15 min on 2 cores
    .venv/bin/python -m bench.run --only 1 4      # some figures
    .venv/bin/python -m bench.run --quick         # toy sizes (what tests/bench/test_bench_smoke.py runs)

Figure 6 starts its own service on loopback (redis-server, the API, one worker), as
``python -m bench.service_overhead`` does, with the same 3 rounds: its p99 is about the 7th slowest of ~750
interactions, and with 2 rounds (~500) it moved more between runs (45 to 130 ms).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench.common import BENCH_DIR, Report, machine, set_threads, write_json


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_reports(reports: list[Report], out=None) -> int:
    """Print the table and the checks; return the exit code (1 when any check failed)."""
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a replaced (captured) stdout
    failed = 0
    for rep in reports:
        print(f"\n== Figure {rep.figure}: {rep.title}", file=out)
        if rep.setup:
            print("   " + "; ".join(f"{k}: {v}" for k, v in rep.setup.items()), file=out)
        for r in rep.rows:
            met = "" if r.met is None else ("  [met]" if r.met else "  [NOT met]")
            tgt = f"  target {r.target}" if r.target else ""
            note = f"  ({r.note})" if r.note else ""
            print(f"   {r.name:<58} {_fmt(r.value):>10} {r.unit:<6}{tgt}{met}{note}", file=out)
        for c in rep.checks:
            print(f"   check {'PASS' if c.ok else 'FAIL'}: {c.name}: {c.detail}", file=out)
            failed += not c.ok
        for s in rep.skipped:
            print(f"   skipped: {s}", file=out)
    print(f"\n{'all correctness checks passed' if not failed else f'{failed} correctness check(s) FAILED'}",
          file=out)
    return 1 if failed else 0


def _figures(quick: bool, n_eval: int | None, scale_ns: list[int] | None) -> dict[str, Callable[[], Report]]:
    from bench import (
        degradation,
        evaluation,
        maps,
        salience,
        sanity,
        scaling,
        service_overhead,
        strategies,
        transformer,
    )

    if quick:
        return {
            "1": lambda: salience.run(batch=2, size=32, reps=1, build=salience.build_tiny, model_name="tinynet",
                                      layer_name="features"),
            "2": lambda: evaluation.run(n_images=n_eval or 16, reps=1, quick=True),
            "3": lambda: degradation.run(n_images=4, road_images=2, reps=1, quick=True),
            "4": lambda: maps.run(n_maps=2_000, n_anchor=200, reps=1),
            "5": lambda: scaling.run(ns=scale_ns or [64, 128], shard_n=128, quick=True),
            "6": lambda: service_overhead.figure(clients=4, rounds=1, phase_seconds=1.0, think=0.2),
            "8": lambda: transformer.run(batch=2, size=32, reps=1, tiny=True),
            "9": lambda: sanity.run(n_images=4, reps=1, quick=True),
            "10": lambda: strategies.run(n_images=16, n_maps=300, reps=1, quick=True),
        }
    return {
        "1": lambda: salience.run(),
        "2": lambda: evaluation.run(n_images=n_eval or 256),
        "3": lambda: degradation.run(),
        "4": lambda: maps.run(),
        "5": lambda: scaling.run(ns=scale_ns, shard_n=500),
        "6": lambda: service_overhead.figure(clients=50, rounds=3, phase_seconds=5.0),
        "8": lambda: transformer.run(),
        "9": lambda: sanity.run(),
        "10": lambda: strategies.run(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None,
                    help="figures to run (1..6, 8, 9, 10; 7 is bench/gpu.sh); default all")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks only, figures meaningless")
    ap.add_argument("--n-eval", type=int, default=None, help="images for figure 2 (default 256)")
    ap.add_argument("--scale-ns", type=int, nargs="*", default=None, help="N values for figure 5")
    ap.add_argument("--out", default=str(BENCH_DIR / "results.json"))
    a = ap.parse_args(argv)
    thread_note = set_threads(1)
    figs = _figures(a.quick, a.n_eval, a.scale_ns)
    chosen = a.only or list(figs)
    reports: list[Report] = []
    t0 = time.perf_counter()
    print(f"machine: {machine()}\nthreads: {thread_note} (every figure; the scaling figure's workers too)")
    for key in chosen:
        t1 = time.perf_counter()
        try:
            rep = figs[key]()
        except Exception as exc:  # a crash is a failed check, and the other figures still run
            rep = Report(key, "crashed")
            rep.check("figure ran", False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        rep.setup["wall_s"] = round(time.perf_counter() - t1, 1)
        reports.append(rep)
        print_reports([rep])
    print(f"\n==== summary (total {time.perf_counter() - t0:.0f} s) ====")
    code = print_reports(reports)
    write_json(__import__("pathlib").Path(a.out), {"machine": machine(), "threads": thread_note,
                                                  "reports": [r.as_dict() for r in reports]})
    return code


if __name__ == "__main__":
    raise SystemExit(main())
