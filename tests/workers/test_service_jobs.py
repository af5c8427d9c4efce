"""Job records and the worker's job steps, in process against a private redis-server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.records import JobRecord, JobState, new_job_id
from jobs.view import public_job
from tests.servicekit import RedisServer
from workers.jobs import ProgressReporter, WorkerEnv, plan_shards, run_job


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> WorkerEnv:
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"t{time.time_ns()}:",
        store_url=str(tmp_path / "store"),
        cache_dir=tmp_path / "cache",
        max_deliveries=2,
    )
    return WorkerEnv.from_settings(settings)


def _job(jobs: JobStore, status: JobState = "queued", **fields: Any) -> str:
    jid = new_job_id()
    spec = {"candidates": [{"name": "a", "models": ["m-x"]}], "dataset": "d-x"}
    jobs.create(JobRecord(id=jid, status=status, created_at=time.time(), spec=spec, cache_key="k", **fields))
    return jid


def _no_dispatch(job_id: str, count: int) -> None:
    raise AssertionError("must not dispatch")


def test_transitions_are_guarded_and_counted(env: WorkerEnv) -> None:
    jobs = env.jobs
    jid = _job(jobs)
    assert jobs.stats()["states"]["queued"] == 1
    assert jobs.transition(jid, "running", ("queued",))
    assert not jobs.transition(jid, "running", ("queued",))  # already running
    assert jobs.transition(jid, "succeeded", ("running",), finished_at=1.0)
    assert not jobs.transition(jid, "canceled", ("queued", "running"))  # an ended job stays ended
    assert jobs.get(jid).status == "succeeded"
    assert jobs.stats()["states"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "canceled": 0}
    assert jobs.transition("j-missing", "running", ("queued",)) is False


def test_finished_job_delivered_again_does_nothing(env: WorkerEnv) -> None:
    jid = _job(env.jobs, status="succeeded")
    before = env.jobs.get(jid)
    run_job(env, jid, _no_dispatch)
    assert env.jobs.get(jid) == before


def test_redelivery_is_bounded(env: WorkerEnv) -> None:
    jid = _job(env.jobs)
    env.jobs.incr_delivery(jid, "job")  # two earlier deliveries died with their worker
    env.jobs.incr_delivery(jid, "job")
    run_job(env, jid, _no_dispatch)
    job = public_job(env.jobs.get(jid))
    assert job["status"] == "failed" and job["error"]["type"].endswith("/worker-lost")
    assert "ETM_MAX_DELIVERIES" in job["error"]["detail"] and job["error"]["instance"] == f"/v1/jobs/{jid}"
    assert env.store.read_json(env.jobs.final_key(jid))["status"] == "failed"  # final record also in the store


def test_worker_revalidates_the_stored_spec(env: WorkerEnv) -> None:
    jid = _job(env.jobs)
    env.jobs.set_fields(jid, spec={"candidates": [], "dataset": "d-x", "measures": ["bogus"]})
    run_job(env, jid, _no_dispatch)
    job = env.jobs.get(jid)
    assert job.status == "failed" and job.error["status"] == 422 and "bogus" in job.error["detail"]


def test_worker_rechecks_ids(env: WorkerEnv) -> None:
    jid = _job(env.jobs)
    run_job(env, jid, _no_dispatch)
    job = env.jobs.get(jid)
    assert job.status == "failed" and "m-x" in job.error["detail"] and "d-x" in job.error["detail"]


def test_cancel_of_queued_job_is_immediate_and_sticks(env: WorkerEnv) -> None:
    jid = _job(env.jobs)
    job = env.jobs.request_cancel(jid)
    assert job.status == "canceled" and job.cancel_requested is True
    run_job(env, jid, _no_dispatch)
    assert env.jobs.get(jid).status == "canceled"


def test_shard_progress_never_goes_backwards(env: WorkerEnv) -> None:
    jid = _job(env.jobs, status="running")
    env.jobs.write_shard_progress(jid, 1, 10, 40, "in-set", 0.0, 0.8)
    env.jobs.write_shard_progress(jid, 0, 4, 40, "in-set", 0.0, 0.8)
    p = env.jobs.get(jid).progress
    assert p.done == 14 and p.total == 40 and p.fraction == pytest.approx(0.28)


def test_job_records_fall_back_to_the_store(env: WorkerEnv) -> None:
    jid = _job(env.jobs)
    env.jobs.request_cancel(jid)
    env.redis.delete(env.jobs.key(jid))  # Redis forgot (eviction, restart without persistence)
    assert env.jobs.get(jid).status == "canceled"


def test_list_pages_skip_expired_records(env: WorkerEnv) -> None:
    made = [_job(env.jobs) for _ in range(5)]
    env.redis.delete(env.jobs.key(made[2]))
    page, cursor = env.jobs.list(None, 2, None)
    assert [j.id for j in page] == made[::-1][:2] and cursor is not None
    rest, end = env.jobs.list(None, 10, cursor)
    assert [j.id for j in rest] == [made[1], made[0]] and end is None


def test_idempotency_claims(env: WorkerEnv) -> None:
    assert env.jobs.claim_idempotency_key("k1", "sha-a", "j-1", 60) is None
    assert env.jobs.claim_idempotency_key("k1", "sha-b", "j-2", 60) == {"job_id": "j-1", "body_sha256": "sha-a"}


def test_plan_shards_is_batch_aligned_and_bounded() -> None:
    assert plan_shards(100, 8, 100, 32) == 1
    assert plan_shards(101, 8, 50, 32) == 3
    assert plan_shards(10_000, 64, 100, 32) == 32
    assert plan_shards(24, 16, 4, 32) == 2  # never more shards than batches



def test_progress_inside_one_salience_call_has_an_eta(env: WorkerEnv) -> None:
    """Score-CAM's masked passes (stage ``step:scorecam`` from the sandbox) land in ``progress.step`` with an
    ETA, beside the stage's own progress, which they neither replace nor move."""
    jid = _job(env.jobs, status="running")
    progress = ProgressReporter(env.jobs, jid, interval=0.0, has_ood=False, inset_total=16)
    progress("in-set", 8, 16)
    before = public_job(env.jobs.get(jid))["progress"]
    progress("step:scorecam", 0, 400)
    time.sleep(0.05)
    progress("step:scorecam", 100, 400)
    job = public_job(env.jobs.get(jid))
    step = job["progress"]["step"]
    assert step["method"] == "scorecam" and (step["done"], step["total"]) == (100, 400)
    assert step["eta_seconds"] is not None and step["eta_seconds"] > 0  # 3x the time the first 100 took
    assert {k: job["progress"][k] for k in ("stage", "done", "total", "fraction")} == {
        k: before[k] for k in ("stage", "done", "total", "fraction")
    }
    env.jobs.transition(jid, "succeeded", ("running",))
    assert "step" not in public_job(env.jobs.get(jid))["progress"]  # only while it runs
