"""Infrastructure faults against the real service (tests/helpers/faults.py has the kit and the tools):

- 10 SIGKILLs (ETM_FAULT_KILLS) of the pool process running a job, at random moments (seeded): each job is redelivered
  at once (task_reject_on_worker_lost), succeeds exactly once and reports what an undisturbed run does;
- a worker killed whole (main process and pool): its message comes back after the visibility timeout
  and the restarted worker completes the job;
- Redis stopped and restarted (append-only file on) under 10 queued jobs: 503 problem+json while it is
  down, and all 10 succeed without intervention;
- the API killed during a job and started again: the job succeeds and is readable through the new API;
- a message delivered twice (after the job ended, and while its first delivery runs on another worker):
  the second delivery does no work and changes nothing.

``make soak`` (tests/soak.py) runs the same faults longer and randomised.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from etm.settings import Settings
from tests.helpers.faults import (
    Inspector,
    comparable,
    fault_kit,
    job_body,
    kill_pool_process_during,
    restart_api,
    restart_worker_whole,
    upload_inputs,
    wait_running,
)
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(600)
KILLS = int(os.environ.get("ETM_FAULT_KILLS", "10"))  # each job now starts a sandboxed model process


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = fault_kit(tmp_path_factory.mktemp("faults"))
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def inspect(kit: ServiceKit) -> Any:
    i = Inspector(kit)
    yield i
    i.close()


@pytest.fixture(scope="module")
def body(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path) -> dict[str, Any]:
    return job_body(upload_inputs(kit, family_onnx, dataset_dir))


@pytest.fixture(scope="module")
def reference(kit: ServiceKit, body: dict[str, Any]) -> dict[str, Any]:
    """Undisturbed runs: the report (without timing), CSV and running time of a warm pool process (the
    first run also loads the models; a killed job's redelivery runs in a fresh, cold process, so kill
    moments drawn within the warm running time fall inside the run)."""
    runs = []
    for key in ("reference", "reference-warm"):
        job = kit.wait(kit.submit(body, key=key).json()["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        report = comparable(kit.client.get(f"/v1/jobs/{job['id']}/report").json())
        runs.append((job, report, kit.client.get(f"/v1/jobs/{job['id']}/report.csv").text))
    (first, report, csv), (warm, warm_report, warm_csv) = runs
    assert warm_report == report and warm_csv == csv, "two undisturbed runs of one spec differ"
    return {"report": report, "csv": csv, "seconds": warm["duration_seconds"], "id": first["id"]}


def assert_same_result(kit: ServiceKit, job_id: str, reference: dict[str, Any]) -> None:
    r = kit.client.get(f"/v1/jobs/{job_id}/report")
    assert r.status_code == 200, r.text
    assert comparable(r.json()) == reference["report"], f"job {job_id}: report differs from the undisturbed run"
    assert kit.client.get(f"/v1/jobs/{job_id}/report.csv").text == reference["csv"]


def test_sigkill_of_pool_process_redelivers_and_completes_once(
    kit: ServiceKit, inspect: Inspector, body: dict[str, Any], reference: dict[str, Any]
) -> None:
    rng = random.Random(20260501)
    before = inspect.counters()
    killed, missed, delays = 0, 0, []
    while killed < KILLS:
        assert missed <= KILLS // 2, f"{missed} jobs ended before their kill moment ({reference['seconds']} s)"
        job_id = kit.submit(body, key=f"kill-{killed}-{missed}").json()["id"]
        delay = kill_pool_process_during(kit, job_id, rng, reference["seconds"])
        job = kit.wait(job_id, timeout=90)
        assert job["status"] == "succeeded", (job["error"], kit.log_tail("worker0"))
        assert_same_result(kit, job_id, reference)
        # Delivered twice (the kill, then the redelivery) and computed to the end once; or once, when the
        # job ended in the milliseconds between the last status check and the kill (a miss, not a hit).
        deliveries = inspect.deliveries(job_id)
        assert deliveries in (1, 2), inspect.record(job_id)
        if delay is None or deliveries == 1:
            missed += 1
            continue
        killed += 1
        delays.append(delay)
    print(f"{killed} kills during a run, {missed} misses; kill moments {min(delays):.2f}-{max(delays):.2f} s into "
          f"runs of {reference['seconds']} s (warm, undisturbed)")
    after = inspect.counters()
    jobs = killed + missed
    assert after["succeeded"] - before["succeeded"] == jobs, (before, after)
    assert after["computed"] - before["computed"] == jobs, "a job was counted as computed twice"
    assert after.get("running", 0) == 0 and after.get("queued", 0) == 0 and after.get("failed", 0) == 0, after
    assert max(delays) > 2 * min(delays), f"kill moments were not spread: {delays}"


def test_worker_killed_whole_comes_back_after_visibility_timeout(
    kit: ServiceKit, inspect: Inspector, body: dict[str, Any], reference: dict[str, Any]
) -> None:
    rng = random.Random(7)
    for attempt in range(4):  # a job of a fraction of a second may end before the kill lands: try another
        job_id = kit.submit(body, key=f"whole-worker-{attempt}").json()["id"]
        wait_running(kit, job_id)
        time.sleep(rng.uniform(0.05, 0.5) * reference["seconds"])
        t0 = time.time()
        restart_worker_whole(kit)
        job = kit.wait(job_id, timeout=90)
        waited = time.time() - t0
        assert job["status"] == "succeeded", job["error"]
        if inspect.deliveries(job_id) == 2:  # the kill hit the run; the message came back
            break
    else:
        raise AssertionError("4 jobs ended before the worker was killed")
    # The message was unacknowledged in Redis until the visibility timeout (20 s) and a restore sweep.
    assert 15 < waited < 20 + 30, waited
    assert_same_result(kit, job_id, reference)


def test_redis_restart_under_queued_jobs(
    kit: ServiceKit, inspect: Inspector, body: dict[str, Any], reference: dict[str, Any]
) -> None:
    assert kit.redis is not None
    ids = [kit.submit(body, key=f"redis-{i}").json()["id"] for i in range(10)]
    wait_running(kit, ids[0])
    kit.redis.stop(signal.SIGTERM)
    try:
        down = [
            kit.client.get(f"/v1/jobs/{ids[-1]}"),
            kit.client.get("/v1/jobs"),
            kit.submit(body, key="while-down"),
            kit.client.get("/readyz"),
        ]
        for r in down:
            assert r.status_code == 503, (r.request.url, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json") or r.request.url.path == "/readyz"
        problem = down[0].json()
        assert "Redis" in problem["detail"] and down[0].headers.get("Retry-After")
        time.sleep(2)
    finally:
        kit.redis.start()  # same port, same data folder: the append-only file brings the queue back
    jobs = [kit.wait(j, timeout=180) for j in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 10, [(j["id"], j["status"], j["error"]) for j in jobs]
    for j in (jobs[0], jobs[-1]):
        assert_same_result(kit, j["id"], reference)
    # The key sent while Redis was down was not bound: the same request now creates a job.
    assert kit.submit(body, key="while-down").status_code == 202
    assert "Traceback" not in kit.log_tail("api", 20000)


def test_api_killed_during_a_job(kit: ServiceKit, body: dict[str, Any], reference: dict[str, Any]) -> None:
    job_id = kit.submit(body, key="api-restart").json()["id"]
    wait_running(kit, job_id)
    restart_api(kit)
    job = kit.wait(job_id, timeout=90)
    assert job["status"] == "succeeded", job["error"]
    assert_same_result(kit, job_id, reference)


def test_duplicate_delivery_changes_nothing(
    kit: ServiceKit, inspect: Inspector, body: dict[str, Any], reference: dict[str, Any]
) -> None:
    from jobs.queue import TASK_RUN_JOB
    from workers.app import make_celery

    assert kit.redis is not None
    celery = make_celery(Settings(redis_url=kit.redis.url))
    log = kit.workdir / "worker0.log"

    # 1. After the job ended: the worker sees the ended job and returns; not a byte changes.
    job_id = reference["id"]
    record, counters = inspect.record(job_id), inspect.counters()
    report = kit.client.get(f"/v1/jobs/{job_id}/report").content
    celery.send_task(TASK_RUN_JOB, kwargs={"job_id": job_id}, queue="cpu")
    _wait_for_line(log, f"job {job_id} already succeeded; nothing to do for job")
    assert inspect.record(job_id) == record and inspect.counters() == counters
    assert kit.client.get(f"/v1/jobs/{job_id}/report").content == report

    # 2. While its first delivery runs: a second worker takes the copy, finds the lease held, drops it.
    kit.start_worker(1)
    try:
        _wait_for_line(kit.workdir / "worker1.log", "ready.")
        # A longer job (all images, two more measures) so that the copy arrives while the first one runs.
        longer = body | {"measures": [*body["measures"], "geometry", "degradation"], "max_images": None}
        job_id = kit.submit(longer, key="duplicate-running").json()["id"]
        wait_running(kit, job_id)
        celery.send_task(TASK_RUN_JOB, kwargs={"job_id": job_id}, queue="cpu")
        # Either worker may have taken the first delivery; the other one gets the copy.
        _wait_for_line([kit.workdir / "worker0.log", kit.workdir / "worker1.log"], f"job:{job_id}:lease:job is held by")
        job = kit.wait(job_id, timeout=90)
        assert job["status"] == "succeeded" and inspect.deliveries(job_id) == 1
        assert job["progress"]["fraction"] == 1.0 and kit.client.get(f"/v1/jobs/{job_id}/report").status_code == 200
    finally:
        kit.kill("worker1", signal.SIGTERM)
    celery.close()


def _wait_for_line(paths: Path | list[Path], text: str, timeout: float = 60) -> None:
    paths = paths if isinstance(paths, list) else [paths]
    deadline = time.time() + timeout
    while not any(text in p.read_text(errors="replace") for p in paths):
        if time.time() > deadline:
            raise TimeoutError(f"{text!r} not in {[p.name for p in paths]}:\n{paths[-1].read_text()[-3000:]}")
        time.sleep(0.1)
