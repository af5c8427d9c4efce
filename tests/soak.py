"""``make soak``: the fault suite, longer and randomised, against the real service.

Two workers (one pool process each), Redis with the append-only file, the API; jobs are submitted in
waves, and while a wave runs, faults are drawn at random (seeded): SIGKILL of a pool process, SIGKILL of
a whole worker (then restarted), Redis stopped (SIGTERM) or killed (SIGKILL) and restarted on the same
port and data, the API killed and restarted, and a job's message sent a second time. At the end every
job must have succeeded exactly once with the report of an undisturbed run, the counters must agree,
and no request may have been answered with a 500. Prints a table of what was tried, how many times
and what held; exits 1 when anything was lost or differed.

    python -m tests.soak [--jobs 40] [--wave 8] [--seed 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from etm.settings import Settings
from jobs.queue import TASK_RUN_JOB
from tests.helpers.faults import Inspector, comparable, fault_kit, job_body, restart_api, upload_inputs
from tests.helpers.tiny import tiny_dataset, tiny_family
from tests.servicekit import ServiceKit
from workers.app import make_celery

FAULTS = ("kill pool process", "kill worker whole", "restart Redis (SIGTERM)", "kill Redis (SIGKILL)",
          "restart API (SIGKILL)", "duplicate message")
WEIGHTS = (5, 1, 1, 1, 1, 2)


class Soak:
    def __init__(self, kit: ServiceKit, rng: random.Random, inspect: Inspector) -> None:
        self.kit, self.rng, self.inspect = kit, rng, inspect
        self.tried: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.celery = make_celery(Settings(redis_url=kit.redis.url if kit.redis else None))

    # -- HTTP that survives the faults ---------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            r = self.kit.client.request(method, path, timeout=30, **kw)
        except httpx.TransportError:
            return None  # the API is down (being restarted)
        self.statuses[r.status_code] += 1
        return r

    def submit(self, body: dict[str, Any], key: str) -> str:
        while True:  # the same Idempotency-Key makes retrying safe
            r = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if r is not None and r.status_code == 202:
                return r.json()["id"]
            if r is not None and r.status_code not in (503,):
                raise RuntimeError(f"submit answered {r.status_code}: {r.text}")
            time.sleep(0.5)

    def status(self, job_id: str) -> str | None:
        r = self.request("GET", f"/v1/jobs/{job_id}")
        return r.json()["status"] if r is not None and r.status_code == 200 else None

    # -- faults ----------------------------------------------------------------------------------------
    def inject(self, fault: str, jobs: list[str]) -> None:
        kit = self.kit
        assert kit.redis is not None
        busy = self.busy_workers(jobs)  # worker name -> pool process running one of the jobs
        workers = sorted(busy) or [n for n in kit.procs if n.startswith("worker")]
        worker = self.rng.choice(workers)
        if fault in ("kill pool process", "kill worker whole"):
            self.tried[f"{fault}: while it ran a job"] += worker in busy
        if fault == "kill pool process":
            for pid in [busy[worker]] if worker in busy else kit.pool_children(worker):
                signal_pid(pid)
        elif fault == "kill worker whole":
            kit.kill(worker, signal.SIGKILL)
            kit.start_worker(int(worker.removeprefix("worker")))
        elif fault in ("restart Redis (SIGTERM)", "kill Redis (SIGKILL)"):
            sig = signal.SIGTERM if "SIGTERM" in fault else signal.SIGKILL
            kit.redis.stop(sig)
            for path in ("/v1/jobs", f"/v1/jobs/{jobs[0]}"):  # while it is down: 503, never 500
                self.request("GET", path)
            time.sleep(self.rng.uniform(0.5, 3))
            kit.redis.start()
        elif fault == "restart API (SIGKILL)":
            restart_api(kit)
        elif fault == "duplicate message":
            self.celery.send_task(TASK_RUN_JOB, kwargs={"job_id": self.rng.choice(jobs)}, queue="cpu")
        self.tried[fault] += 1

    def busy_workers(self, jobs: list[str]) -> dict[str, int]:
        """Which worker's pool process runs one of ``jobs``, from the leases the tasks hold (host:pid:nonce)."""
        pids = set()
        for job_id in jobs:
            try:
                holder = self.inspect.r.get(f"etm:job:{job_id}:lease:job")
            except Exception:  # noqa: BLE001 - Redis may be down right now
                return {}
            if holder:
                pids.add(int(holder.decode().rsplit(":", 2)[1]))
        out = {}
        for name in [n for n in self.kit.procs if n.startswith("worker")]:
            for pid in self.kit.pool_children(name):
                if pid in pids:
                    out[name] = pid
        return out

    def run_wave(self, body: dict[str, Any], keys: list[str], timeout: float = 600) -> list[str]:
        ids = [self.submit(body, k) for k in keys]
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(self.rng.uniform(1.0, 3.0))
            states = [self.status(j) for j in ids]
            if all(s in ("succeeded", "failed", "canceled") for s in states):
                return ids
            # About one fault every 3 s while jobs are queued or running: often enough to hit most runs,
            # rarely enough that no job is killed ETM_MAX_DELIVERIES times (that job would rightly fail).
            if self.rng.random() < 0.6:
                self.inject(self.rng.choices(FAULTS, WEIGHTS)[0], ids)
        raise TimeoutError(f"wave not done after {timeout} s: {[self.status(j) for j in ids]}")


def signal_pid(pid: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--wave", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="etm-soak-"))
    t0 = time.time()
    models = tiny_family(workdir / "models", k=3)
    dataset = tiny_dataset(workdir / "dataset")
    # A job may be hit several times: allow more deliveries than the default 3.
    kit = fault_kit(workdir / "kit", n_workers=2, ETM_MAX_DELIVERIES="12")
    kit.start()
    failures: list[str] = []
    try:
        inspect = Inspector(kit)
        body = job_body(upload_inputs(kit, models, dataset))
        # Longer jobs than the test's (all images, two more measures), so that faults land inside runs.
        body |= {"measures": [*body["measures"], "geometry", "degradation"], "max_images": None}
        ref_id = kit.wait(kit.submit(body, key="reference").json()["id"], timeout=120)["id"]
        ref = comparable(kit.client.get(f"/v1/jobs/{ref_id}/report").json())
        ref_csv = kit.client.get(f"/v1/jobs/{ref_id}/report.csv").text
        before = inspect.counters()
        soak = Soak(kit, random.Random(args.seed), inspect)
        ids: list[str] = []
        for start in range(0, args.jobs, args.wave):
            keys = [f"soak-{i}" for i in range(start, min(start + args.wave, args.jobs))]
            ids += soak.run_wave(body, keys)
        kit.wait_api()
        redeliveries = 0
        for job_id in ids:
            job = kit.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "succeeded":
                failures.append(f"{job_id} {job['status']}: {job.get('error')}")
                continue
            if comparable(kit.client.get(f"/v1/jobs/{job_id}/report").json()) != ref:
                failures.append(f"{job_id}: report differs from the undisturbed run")
            if kit.client.get(f"/v1/jobs/{job_id}/report.csv").text != ref_csv:
                failures.append(f"{job_id}: per-image CSV differs from the undisturbed run")
            redeliveries += max(0, inspect.deliveries(job_id) - 1)
        after = inspect.counters()
        succeeded = after["succeeded"] - before["succeeded"]
        computed = after["computed"] - before["computed"]
        if succeeded != len(ids) or computed != len(ids):
            failures.append(f"counters: {succeeded} succeeded and {computed} computed for {len(ids)} jobs")
        if after.get("running", 0) or after.get("queued", 0):
            failures.append(f"jobs left running/queued: {after}")
        if soak.statuses[500]:
            failures.append(f"{soak.statuses[500]} answers were 500")
        ok = not failures
        held = "every job succeeded once, report and CSV equal to the undisturbed run" if ok else "NO (see below)"
        print(f"\nsoak: {len(ids)} jobs, seed {args.seed}, {time.time() - t0:.0f} s, workdir {workdir}")
        print("| what was tried | how many times | what held |")
        print("|---|---|---|")
        for fault in FAULTS:
            hit = soak.tried.get(f"{fault}: while it ran a job")
            what = f"{fault} ({hit} while it ran a job)" if hit is not None else fault
            print(f"| {what} | {soak.tried[fault]} | {held} |")
        print(f"| jobs through the faults | {len(ids)} | {succeeded} succeeded, {computed} computed once each; "
              f"{redeliveries} redeliveries after kills |")
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(soak.statuses.items()))
        print(f"| API requests during the soak | {sum(soak.statuses.values())} | answers by status {answers}; "
              f"no 500 |" if not soak.statuses[500] else f"| API requests | - | {answers} |")
        for f in failures:
            print("FAILED:", f)
        inspect.close()
        soak.celery.close()
        return 0 if ok else 1
    finally:
        kit.stop()


if __name__ == "__main__":
    sys.exit(main())
