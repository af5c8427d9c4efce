"""Fault injection on a running ServiceKit, shared by tests/workers/test_faults.py and the soak (tests/soak.py).

A fault kit: one worker with one pool process, the result cache off (every job really computes), a
Redis with the append-only file on, and short limits so that a message of a worker killed whole comes
back within seconds (visibility timeout 20 s) and a dead delivery's lease expires in 6 s.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import redis

from tests.servicekit import ServiceKit

FAULT_ENV = {
    "ETM_RESULT_CACHE": "false",
    "ETM_TASK_SOFT_TIME_LIMIT": "15",
    "ETM_TASK_TIME_LIMIT": "18",
    "ETM_VISIBILITY_TIMEOUT": "20",
    "ETM_JOB_LEASE_SECONDS": "6",
    "ETM_MAX_DELIVERIES": "3",
}
PREFIX = "etm:"


def fault_kit(workdir: Path, n_workers: int = 1, **env: str) -> ServiceKit:
    return ServiceKit(workdir, n_workers=n_workers, env={**FAULT_ENV, **env}, redis_persistent=True)


def upload_inputs(kit: ServiceKit, models: list[Path], dataset: Path) -> dict[str, Any]:
    ids = []
    for p in models:
        r = kit.upload_model(p, metadata=p.with_name(p.name + ".json").read_text())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    ds = kit.upload_dataset(dataset, "tiny.zip")
    assert ds.status_code == 201, ds.text
    return {"models": ids, "dataset": ds.json()["id"]}


def job_body(ids: dict[str, Any]) -> dict[str, Any]:
    """Small (about a second warm on one core: 6 batches, geometry's 12 transforms) but long enough that
    a kill drawn within its running time lands while it runs, also on an idle machine; a fixed seed."""
    m = ids["models"]
    return {
        "candidates": [{"name": "a", "models": m[:2]}, {"name": "b", "models": m[1:]}],
        "dataset": ids["dataset"],
        "measures": ["entropy", "stability", "geometry", "agreement", "accuracy"],
        "seed": 0,
        "bootstrap_resamples": 100,
        "batch_size": 4,
        "max_images": 24,
        "overlays": 2,
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what legitimately differs between two runs of one spec: wall-clock timing."""
    r = json.loads(json.dumps(report))
    r["provenance"].pop("timing", None)
    return r


class Inspector:
    """Reads the kit's Redis directly (job records, counters) to prove what happened inside."""

    def __init__(self, kit: ServiceKit) -> None:
        assert kit.redis is not None
        self.r = redis.Redis.from_url(kit.redis.url, socket_connect_timeout=2)

    def record(self, job_id: str) -> dict[str, Any]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(f"{PREFIX}job:{job_id}").items()}

    def deliveries(self, job_id: str, part: str = "job") -> int:
        return int(self.record(job_id).get(f"deliveries:{part}", 0))

    def counters(self) -> dict[str, int]:
        states = {k.decode(): int(v) for k, v in self.r.hgetall(f"{PREFIX}stats:state").items()}
        computed = int(self.r.hget(f"{PREFIX}stats:duration", "count") or 0)
        return {**states, "computed": computed}

    def close(self) -> None:
        self.r.close()


def wait_running(kit: ServiceKit, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return kit.wait(job_id, timeout=timeout, poll=0.02, until=lambda j: j["status"] != "queued")


def kill_pool_process_during(
    kit: ServiceKit, job_id: str, rng: random.Random, seconds: float, worker: str = "worker0"
) -> float | None:
    """SIGKILL the pool process running ``job_id`` at a random moment within its first ``seconds`` of
    running (5-60%). Returns the delay, or None when the job was no longer running at that moment."""
    wait_running(kit, job_id)
    delay = rng.uniform(0.05, 0.6) * seconds
    time.sleep(delay)
    children = kit.pool_children(worker)
    if kit.client.get(f"/v1/jobs/{job_id}").json()["status"] != "running" or len(children) != 1:
        return None
    os.kill(children[0], signal.SIGKILL)
    return delay


def restart_worker_whole(kit: ServiceKit, worker: str = "worker0", timeout: float = 90) -> None:
    """SIGKILL a worker and its pool (as a machine dies), then start it again and wait until it consumes."""
    log = kit.workdir / f"{worker}.log"
    before = log.read_text(errors="replace").count("ready.")
    kit.kill(worker, signal.SIGKILL)
    kit.start_worker(int(worker.removeprefix("worker")))
    deadline = time.time() + timeout
    while log.read_text(errors="replace").count("ready.") <= before:
        if time.time() > deadline:
            raise TimeoutError(f"{worker} did not come back\n{kit.log_tail(worker)}")
        time.sleep(0.2)


def restart_api(kit: ServiceKit) -> None:
    kit.kill("api", signal.SIGKILL)
    kit.start_api()
    kit.wait_api()
