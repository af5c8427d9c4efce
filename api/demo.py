"""``python -m api.demo`` (``make demo``): score the built-in ``xent`` and ``cyborg`` families on the
built-in faces test split through the running service, and print the ranking.

Uses the service at ``ETM_API_URL`` (default http://127.0.0.1:8000); when none answers there, starts
``python -m api.devserver`` in the background for the duration of the demo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from api.examples import DEMO_JOB
from etm.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ready(client: httpx.Client, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the devserver exited with code {proc.returncode}; see its output above")
        try:
            if client.get("/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the service at {client.base_url} did not become ready within {timeout:.0f} s")


def _builtins_present(client: httpx.Client) -> bool:
    try:
        if client.get("/v1/datasets/builtin:faces", timeout=10).status_code != 200:
            return False
        families = {f["name"] for f in client.get("/v1/families", timeout=10).json()["items"]}
    except httpx.HTTPError:
        return False
    return {"xent", "cyborg"} <= families


def _wait_builtins(client: httpx.Client, timeout: float, proc: subprocess.Popen | None) -> None:
    """A devserver registers the built-ins while its API already answers: wait for them."""
    deadline = time.time() + timeout
    while not _builtins_present(client):
        if proc is None:
            raise SystemExit(
                f"the service at {client.base_url} has no built-in dataset builtin:faces or families xent/cyborg; "
                "start it with `make run` (which registers them) or run `python -m jobs.builtins` against its store"
            )
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("the devserver did not register the built-ins; see its log")
        time.sleep(1)


def start_devserver(url: str, log: Path) -> subprocess.Popen:
    parts = urlsplit(url)
    env = dict(os.environ, ETM_API_HOST=parts.hostname or "127.0.0.1", ETM_API_PORT=str(parts.port or 80))
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"no service at {url}; starting `python -m api.devserver` for this demo (log: {log})", flush=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "api.devserver"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def ranking_table(report: dict[str, Any]) -> str:
    """The comparison block of a report as a text table."""
    comp = report["comparison"]
    rows = [("measure", "better", "rank", "candidate", "value", "95% CI", "tied with")]
    for name, m in comp["measures"].items():
        for i, r in enumerate(m["ranking"]):
            ci = r.get("ci")
            ci_txt = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None and ci[1] is not None else "-"
            value = f"{r['value']:.4f}" if r.get("value") is not None else "-"
            rows.append(
                (
                    name if i == 0 else "",
                    m["direction"] if i == 0 else "",
                    str(r["rank"]),
                    r["candidate"],
                    value,
                    ci_txt,
                    ", ".join(r.get("tied_with") or []) or "-",
                )
            )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"Pareto set: {', '.join(comp['pareto_set']) or '-'}")
    lines.append(f"({comp.get('method', '')})")
    return "\n".join(lines)


def run_demo(url: str, timeout: float = 900) -> int:
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/v1/jobs", json=DEMO_JOB)
        if job.status_code != 202:
            print(f"submitting the demo job failed ({job.status_code}): {job.text}", file=sys.stderr)
            return 1
        job_id = job.json()["id"]
        print(f"job {job_id}: {DEMO_JOB['max_images']} face images, families xent vs cyborg", flush=True)
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            j = client.get(f"/v1/jobs/{job_id}").json()
            p = j["progress"]
            line = f"  {j['status']:<9} {p['stage']:<11} {p['fraction']:6.1%}"
            if line != last:
                print(line, flush=True)
                last = line
            if j["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(1)
        else:
            print(f"job {job_id} did not finish within {timeout:.0f} s", file=sys.stderr)
            return 1
        if j["status"] != "succeeded":
            print(f"job {job_id} {j['status']}: {(j.get('error') or {}).get('detail', '')}", file=sys.stderr)
            return 1
        report = client.get(f"/v1/jobs/{job_id}/report").json()
        hit = " (from the result cache)" if j["cache_hit"] else f" in {j.get('duration_seconds') or 0:.0f} s"
        print(f"\nsucceeded{hit}. Ranking (rank 1 = best; equal ranks are statistically tied):\n")
        print(ranking_table(report))
        print(f"\nreport: {url}/v1/jobs/{job_id}/report   artifacts: {url}/v1/jobs/{job_id}/artifacts")
        return 0


def main() -> int:
    settings = Settings()
    url = settings.api_url.rstrip("/")
    proc = None
    with httpx.Client(base_url=url) as client:
        if not _up(client):
            proc = start_devserver(url, settings.var_dir / "demo-devserver.log")
            print("waiting for it to be ready (the first start generates the benchmark data: about a minute)")
        try:
            _ready(client, 600, proc)
            _wait_builtins(client, 600, proc)
            return run_demo(url)
        finally:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
