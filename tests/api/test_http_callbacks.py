"""Callbacks of jobs the API ends itself run on threads of their own, and every attempt has a total deadline
(ETM_CALLBACK_TIMEOUT): receivers that trickle one byte a second hold neither the API's request threads nor a
delivery (the workers' path, ``jobs.webhooks.deliver``, has the same deadline).

Real service (own redis-server, the API under uvicorn, no worker: jobs stay queued, so canceling one makes the API
send its callback); the receiver is a raw socket server on 127.0.0.1. The figures are printed (pytest -s).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.records import JobRecord, new_job_id
from jobs.storage import ArtifactStore
from jobs.webhooks import deliver
from tests.helpers.faults import upload_inputs
from tests.helpers.http import p95, start_api_only
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)

CALLBACK_TIMEOUT = 2.0
CALLBACK_THREADS = 8
SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    k = start_api_only(
        tmp_path_factory.mktemp("callbacks"),
        {
            "ETM_WEBHOOK_SECRET": SECRET,
            "ETM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1/32",
            "ETM_CALLBACK_TIMEOUT": str(CALLBACK_TIMEOUT),
            "ETM_CALLBACK_ATTEMPTS": "1",
            "ETM_API_CALLBACK_THREADS": str(CALLBACK_THREADS),
            "ETM_RATE_JOBS_PER_MINUTE": "0",
        },
        inspector=True,  # uploads are inspected by a worker; jobs stay queued (no job worker) until canceled
    )
    yield k
    k.stop()


@dataclass
class Trickler:
    """A callback receiver that accepts, reads what comes and answers one byte every ``interval`` seconds,
    never finishing its headers; records when each connection was accepted and when the client gave up."""

    interval: float = 1.0
    conns: list[dict[str, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            rec: dict[str, float | None] = {"accepted": time.monotonic(), "closed": None}
            self.conns.append(rec)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _serve(self, conn: socket.socket, rec: dict[str, float | None]) -> None:
        payload = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Slow: " + b"z" * 10_000
        i, last = 0, 0.0
        conn.settimeout(0.1)
        with conn:
            while not self.stopped.is_set():
                try:
                    if conn.recv(65536) == b"":
                        break
                except TimeoutError:
                    pass
                except OSError:
                    break
                if time.monotonic() - last >= self.interval:
                    try:
                        conn.send(payload[i : i + 1])
                    except OSError:
                        break
                    i, last = i + 1, time.monotonic()
            else:
                return
            rec["closed"] = time.monotonic()

    def max_open_at_once(self) -> int:
        events = [(c["accepted"], 1) for c in self.conns] + [(c["closed"], -1) for c in self.conns if c["closed"]]
        events.sort()
        n = best = 0
        for _, d in events:
            n += d
            best = max(best, n)
        return best

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture(scope="module")
def inputs(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path) -> dict[str, Any]:
    return upload_inputs(kit, family_onnx[:1], dataset_dir)


def test_trickling_receivers_hold_neither_request_threads_nor_deliveries(
    kit: ServiceKit, inputs: dict[str, Any]
) -> None:
    receiver = Trickler(interval=1.0)
    n_jobs = 44  # more than the 40 request threads
    body = {
        "candidates": [{"name": "a", "models": inputs["models"][:1]}],
        "dataset": inputs["dataset"],
        "measures": ["entropy"],
        "max_images": 8,
        "bootstrap_resamples": 100,
        "callback_url": receiver.url,
    }
    try:
        ids = []
        for i in range(n_jobs):
            r = kit.client.post("/v1/jobs", json=body | {"seed": i}, timeout=10)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        cancel_errors = []
        for job_id in ids:  # canceled while queued: the API sends each callback
            try:
                assert kit.client.post(f"/v1/jobs/{job_id}/cancel", timeout=5).json()["status"] == "canceled"
            except httpx.HTTPError as exc:
                cancel_errors.append(repr(exc))
        # Meanwhile the API answers as usual; then every callback ends within its deadline.
        latencies, failures, outcomes = [], [], {}
        deadline = time.monotonic() + n_jobs / CALLBACK_THREADS * (CALLBACK_TIMEOUT + 0.5) + 20
        while time.monotonic() < deadline and len(outcomes) < n_jobs:
            for job_id in ids:
                if job_id in outcomes:
                    continue
                t = time.perf_counter()
                try:
                    job = kit.client.get(f"/v1/jobs/{job_id}", timeout=5).json()
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    break
                latencies.append(time.perf_counter() - t)
                if job.get("callback"):
                    outcomes[job_id] = job["callback"]
            time.sleep(0.1)
    finally:
        receiver.close()
    held = [c["closed"] - c["accepted"] for c in receiver.conns if c["closed"]]
    print(f"{n_jobs} canceled jobs, callbacks to a receiver trickling 1 byte/s: {len(outcomes)} outcomes, "
          f"{len(receiver.conns)} connections (at most {receiver.max_open_at_once()} at once), held "
          f"{min(held, default=0):.1f}-{max(held, default=0):.1f} s; GET p95 {p95(latencies) * 1000:.0f} ms, "
          f"max {max(latencies, default=0) * 1000:.0f} ms, {len(failures)} failed, {len(cancel_errors)} cancels failed")
    assert not cancel_errors and not failures, (cancel_errors[:3], failures[:3])
    assert p95(latencies) < 1.0, sorted(latencies)[-5:]
    assert len(outcomes) == n_jobs, f"only {len(outcomes)} of {n_jobs} callbacks ended"
    for outcome in outcomes.values():
        assert not outcome["delivered"] and outcome["attempts"] == 1
        assert f"no complete answer within {CALLBACK_TIMEOUT:g} s" in outcome["error"], outcome
    assert len(held) == len(receiver.conns) == n_jobs
    assert max(held) <= CALLBACK_TIMEOUT + 1.5, sorted(held)[-5:]
    assert receiver.max_open_at_once() <= CALLBACK_THREADS


def test_worker_delivery_gives_up_at_the_total_deadline(kit: ServiceKit) -> None:
    """The workers' path (jobs.webhooks.deliver, sync): two attempts against a trickler, each cut at the
    deadline, not at a per-read timeout the trickle keeps resetting."""
    jobs = JobStore(redis.Redis.from_url(kit.redis.url), ArtifactStore(str(kit.workdir / "store")))
    receiver = Trickler(interval=0.5)
    settings = Settings(
        webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1/32", callback_timeout=1.5, callback_attempts=2,
        webhook_backoff_seconds=0.2,
    )
    t = time.time()
    job = jobs.create(JobRecord(id=new_job_id(), status="succeeded", created_at=t, finished_at=t, spec={"seed": 0},
                                callback_url=receiver.url))
    result: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        result["outcome"] = deliver(settings, jobs, job)
        result["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(20)
    receiver.close()
    print(f"worker delivery to a trickler: {result}")
    assert not worker.is_alive(), "the delivery was still waiting for the trickling receiver after 20 s"
    assert result["seconds"] <= 2 * 1.5 + 0.2 + 1.5, result
    assert result["outcome"].attempts == 2 and "no complete answer within 1.5 s" in result["outcome"].error

