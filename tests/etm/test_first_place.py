"""One "first place" rule (etm.comparison.holds_first_place): `etm compare`, the report page and the
leaderboard count the same first places on one job's report, a tie of everyone counting for nobody; and the
rule imports without numpy (the CI client is installed with httpx only)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np

from api.pages import render_report_html
from api.routers.leaderboards import Board
from client.cli import comparison_table
from client.types import Report
from etm.comparison import compare, first_places
from etm.leaderboard import build_boards
from etm.measures.base import MeasureResult
from tests.servicekit import REPO

N = 60


def _result(name: str, direction: str, per_image: np.ndarray) -> MeasureResult:
    v = float(per_image.mean())
    return MeasureResult(name=name, value=v, ci=(v - 0.01, v + 0.01), n=N, direction=direction,
                         variant="default", parameters={}, per_image=per_image)


def _job_report() -> tuple[dict[str, Any], dict[str, Any]]:
    """Three candidates scored by the real paired comparison: ``a`` first on geometry.ssim, ``b`` and ``c`` tied
    first on entropy.spatial (lower is better), ``b`` first on stability.ssim, and all three tied on
    agreement.human (nobody's first place)."""
    rng = np.random.default_rng(0)
    noise = {c: rng.normal(0, 0.05, N) for c in "abc"}
    shared = rng.normal(0.5, 0.2, N)
    per = {
        "geometry.ssim": ("higher", {"a": 0.8 + noise["a"], "b": 0.5 + noise["b"], "c": 0.5 + noise["c"]}),
        "entropy.spatial": ("lower", {"a": 0.9 + noise["a"], "b": 0.4 + noise["b"], "c": 0.4 + noise["c"]}),
        "stability.ssim": ("higher", {"a": 0.3 + noise["a"], "b": 0.7 + noise["b"], "c": 0.3 + noise["c"]}),
        "agreement.human": ("higher", {c: shared + rng.normal(0, 0.3, N) for c in "abc"}),
    }
    results = {c: [_result(m, d, vals[c]) for m, (d, vals) in per.items()] for c in "abc"}
    spec = {"dataset": "d-1", "split": "test", "seed": 0, "candidates": [{"name": c, "models": [f"m-{c}"]}
                                                                         for c in "abc"]}
    report = {
        "config": spec,
        "candidates": [{"name": c, "n_runs": 1, "measures": {r.name: r.as_dict() for r in rs}}
                       for c, rs in results.items()],
        "comparison": compare(results, seed=0, n_resamples=500),
        "warnings": [],
    }
    return report, {"id": "j-1", "spec": spec, "finished_at": 1.0, "status": "succeeded"}


def test_cli_page_and_leaderboard_count_the_same_first_places() -> None:
    report, job = _job_report()
    ranks = {m: [e["rank"] for e in cm["ranking"]] for m, cm in report["comparison"]["measures"].items()}
    assert ranks["agreement.human"] == [1, 1, 1], ranks  # the all-tied measure the old CLI count gave everyone
    expected = {"a": 1, "b": 2, "c": 1}
    assert first_places(report["comparison"]) == expected

    footer = next(line for line in comparison_table(Report(report)).splitlines() if line.startswith("first places"))
    cli = {k: int(v) for k, v in (part.split() for part in footer.removeprefix("first places: ").split(", "))}

    page = render_report_html(report)
    counts = re.findall(r'<i style="background:[^"]+"></i>(\w+)</span> <span class="badge[^"]*">[^<]+</span></div>'
                        r'\s*<div class="kv"><span>ranked first on</span><b>(\d+) of (\d+)</b>', page)
    assert {n for _, _, n in counts} == {"4"}
    on_page = {c: int(w) for c, w, _ in counts}

    (board,) = [Board.model_validate(b) for b in build_boards([(job, report)])]
    on_board = dict.fromkeys("abc", 0)
    for m in board.measures.values():
        for e in m.ranking:
            on_board[e.candidate] += e.first_place
    # One job on the board: the same ranks as the job's comparison, hence the same first places.
    assert {m: [e.rank for e in lm.ranking] for m, lm in board.measures.items()} == ranks
    assert cli == on_page == on_board == expected


def test_the_leaderboard_ranks_only_what_a_comparison_ranks() -> None:
    """Accuracy has no per-image values to pair: the job's comparison leaves it out, and so does the board."""
    report, job = _job_report()
    for cand in report["candidates"]:
        cand["measures"]["accuracy"] = {"value": 0.9, "ci": [0.85, 0.95], "direction": "higher"}
    (board,) = build_boards([(job, report)])
    assert "accuracy" not in board["measures"] and set(board["measures"]) == set(report["comparison"]["measures"])


def test_the_rule_imports_without_numpy() -> None:
    code = ("import sys; sys.modules['numpy'] = None; from etm.comparison import first_places; "
            "print(first_places({'candidates': ['x', 'y'], 'measures': {'m': {'ranking': "
            "[{'candidate': 'x', 'rank': 1}, {'candidate': 'y', 'rank': 2}]}}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'x': 1, 'y': 0}"
