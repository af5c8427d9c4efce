"""The examples stay in step with the client: every ``etm`` command in examples/ci-gate.yml parses with
today's CLI, its gate requirements parse, and examples/select_model.py picks as its docstring says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from client.cli import build_parser
from client.gate import parse_requirement
from client.types import Report
from tests.servicekit import REPO

EXAMPLES = REPO / "examples"


def etm_commands(workflow: dict) -> list[list[str]]:
    cmds = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            script = re.sub(r"\\\n\s*", " ", script)  # join continued lines
            script = re.sub(r"\$\{\{[^}]*\}\}", "X", script)  # workflow expressions
            for line in script.splitlines():
                for m in re.finditer(r"(?:^|\$\(|\s)(etm\s[^)\n]*)", line):
                    text = m.group(1).split("#")[0].split(">>")[0].strip()
                    cmds.append(shlex.split(text)[1:])
    return cmds


def test_ci_gate_workflow_commands_parse() -> None:
    wf = yaml.safe_load((EXAMPLES / "ci-gate.yml").read_text())
    cmds = etm_commands(wf)
    seen = {c[0] for c in cmds}
    assert {"models", "jobs", "gate", "compare"} <= seen, seen
    parser = build_parser()
    for argv in cmds:
        args = parser.parse_args(argv)
        if args.command == "gate":
            assert args.require and args.candidate == ["candidate"]
            for r in args.require:
                parse_requirement(r)


def test_select_model_picks_from_the_pareto_set() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("select_model", EXAMPLES / "select_model.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)

    def entry(c: str, rank: int, v: float) -> dict:
        return {"candidate": c, "rank": rank, "value": v, "ci": [v - 0.01, v + 0.01], "tied_with": []}

    report = Report({
        "candidates": [{"name": n, "measures": {"stability.ssim": {"value": v}}}
                       for n, v in (("x", 0.4), ("y", 0.7), ("z", 0.1))],
        "comparison": {
            "candidates": ["x", "y", "z"],
            "pareto_set": ["x", "y"],
            "measures": {
                "stability.ssim": {"direction": "higher", "paired_differences": [],
                                   "ranking": [entry("y", 1, 0.7), entry("x", 2, 0.4), entry("z", 3, 0.1)]},
                "accuracy": {"direction": "higher", "paired_differences": [],
                             "ranking": [entry("z", 1, 0.9), entry("x", 1, 0.9), entry("y", 3, 0.5)]},
            },
        },
    })
    chosen, why = mod.pick(report, ("stability.ssim",))
    assert chosen == "y"
    assert why[0] == "Pareto set: x, y" and any(line.startswith("stability.ssim (higher") for line in why)


@pytest.mark.parametrize("name", ["select_model.py"])
def test_examples_have_help(name: str) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "--family" in r.stdout


def test_docs_mention_every_remote_command() -> None:
    doc = (REPO / "docs" / "CLIENT.md").read_text()
    for cmd in ("etm models push", "etm datasets push", "etm jobs submit", "etm jobs status", "etm jobs report",
                "etm jobs cancel", "etm compare", "etm gate", "etm leaderboard", "etm mlflow-log"):
        assert cmd in doc, cmd
    assert Path(EXAMPLES / "ci-gate.yml").name in doc


def test_local_subcommands_are_the_local_clis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`etm score|salience|merge` behave as etm.cli's (same parser, same exit codes)."""
    from client.cli import main

    code = main(["score", "--candidate", f"a={tmp_path / 'missing.onnx'}", "--dataset", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["score"])
    assert exc.value.code == 2


def test_one_parser_holds_every_subcommand() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"salience", "score", "merge", "models", "datasets", "jobs", "compare", "gate",
                                "leaderboard", "mlflow-log"}


def test_one_exit_code_table_and_the_docs_agree() -> None:
    from client.errors import ApiError, ConnectionFailed, JobFailed
    from client.exit_codes import ExitCode, UsageError, exit_code_for
    from client.gate import RequirementError
    from client.types import Job

    doc = (REPO / "docs" / "CLIENT.md").read_text()
    for code in ExitCode:
        assert f"| **{int(code)}** | `{code.name}` |" in doc, code
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 75, 130]
    failed = Job.from_json({"id": "j-1", "status": "failed", "links": {}, "error": {"title": "Boom"}})
    cases = {
        ExitCode.FAILED: [JobFailed(failed)],
        ExitCode.USAGE: [UsageError("x"), RequirementError("x"), ValueError("x"), FileNotFoundError("x"),
                         ApiError({"status": 404, "title": "Not found"})],
        ExitCode.SERVICE: [ApiError({"status": 502, "title": "Bad gateway"}), ConnectionFailed("x")],
        ExitCode.INTERNAL: [RuntimeError("x"), KeyError("x")],
        ExitCode.INTERRUPTED: [KeyboardInterrupt()],
        ExitCode.NOT_FINISHED: [ApiError({"status": 409, "type": "https://explain-to-me.dev/problems/job-not-finished",
                                          "detail": "job j-1 is running (40% done); Poll GET /v1/jobs/j-1"})],
    }
    for code, errors in cases.items():
        for exc in errors:
            assert exit_code_for(exc)[0] is code, (exc, code)
    assert exit_code_for(ConnectionFailed("cannot reach x"))[1].endswith("is the service running? (--url or "
                                                                         "$ETM_API_URL)")
