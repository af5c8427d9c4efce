"""The jobs layer on its own (``jobs/``): the record's Redis encoding, the problem table, the submit use case
with an injected ``send``, against a private redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from etm.datasets.archives import ArchiveLimits
from etm.errors import BadInput, ModelRuntimeError, UploadTooLarge
from etm.models.base import ModelOutOfMemory
from etm.models.metadata import ModelMetadata
from etm.settings import Settings
from etm.spec import EvaluationSpec
from jobs.admission import check_spec
from jobs.errors import EnqueueFailed, IdempotencyKeyReused, WorkerLost
from jobs.job_store import JobStore
from jobs.problems import PROBLEMS, kind_of, problem_for
from jobs.records import JobRecord, Progress, new_job_id
from jobs.registry import Registry, UnknownReference
from jobs.storage import ArtifactStore
from jobs.submit import submit
from jobs.view import public_job
from tests.servicekit import RedisServer, zip_folder
from workers.jobs import job_problem


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield redis.Redis.from_url(server.url)
    server.stop()


@pytest.fixture
def jobs(client: redis.Redis, tmp_path: Path) -> JobStore:
    return JobStore(client, ArtifactStore(str(tmp_path / "store")), prefix=f"t{time.time_ns()}:")


# -- the record --------------------------------------------------------------------------------------


def test_a_record_written_before_the_types_reads_and_writes_back_the_same(jobs: JobStore) -> None:
    """A hash as the untyped code wrote it (json.dumps per field, HINCRBY delivery counters, no tenant)."""
    jid = new_job_id()
    plain: dict[str, Any] = {
        "id": jid, "status": "running", "created_at": 1700000000.25, "updated_at": 1700000001.5, "started_at": None,
        "spec": {"dataset": "d-x", "candidates": [{"name": "a", "models": ["m-x"]}]}, "cache_key": "k",
        "cache_hit": False, "cancel_requested": False, "error": None, "shards": 3, "dispatched": True,
        "progress": {"stage": "in-set", "done": 4, "total": 40, "fraction": 0.09, "updated_at": 1700000001.5},
        "step": {"method": "scorecam", "done": 10, "total": 400, "eta_seconds": 12.5, "updated_at": 1700000001.0},
    }
    jobs.r.hset(jobs.key(jid), mapping={k: json.dumps(v) for k, v in plain.items()})
    jobs.incr_delivery(jid, "shard1")
    jobs.incr_delivery(jid, "shard1")
    job = jobs.get(jid)
    assert job is not None and job.progress == Progress.at("in-set", 4, 40, 0.09, 1700000001.5)
    assert job.deliveries == {"shard1": 2} and job.tenant is None and job.owner == "local"
    assert job.flat() == plain | {"deliveries:shard1": 2}  # exactly the fields it had, as plain JSON
    assert job.to_redis() == {k.decode(): v.decode() for k, v in jobs.r.hgetall(jobs.key(jid)).items()}


def test_fields_are_typed_on_the_way_in(jobs: JobStore) -> None:
    jid = jobs.create(JobRecord(id=new_job_id(), status="queued")).id
    with pytest.raises(ValueError, match="not job record fields"):
        jobs.set_fields(jid, progres={"stage": "x"})
    with pytest.raises(ValidationError):
        jobs.set_fields(jid, shards="many")
    jobs.set_fields(jid, progress=Progress.at("loading", 0, 0, 0.0, 5.0))
    assert json.loads(jobs.r.hget(jobs.key(jid), "progress")) == {
        "stage": "loading", "done": 0, "total": 0, "fraction": 0.0, "updated_at": 5.0
    }


# -- the problem table -------------------------------------------------------------------------------


def test_each_exception_type_has_one_row() -> None:
    assert len(set(PROBLEMS)) == len(PROBLEMS) and Exception in PROBLEMS
    assert all(isinstance(t, type) and issubclass(t, BaseException) for t in PROBLEMS)


@pytest.mark.parametrize(
    ("exc", "status", "slug"),
    [
        (UnknownReference("m-x"), 422, "unknownreference"),
        (UploadTooLarge("big"), 413, "uploadtoolarge"),  # a BadInput subclass's own status
        (BadInput("no"), 422, "badinput"),
        (ModelRuntimeError("NaN"), 422, "model-runtime-error"),
        (ModelOutOfMemory("even one image", 1), 507, "out-of-memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), 507, "out-of-memory"),
        (WorkerLost("died running it, e.g. out of memory"), 500, "worker-lost"),  # not an allocation failure
        (EnqueueFailed("broker down"), 503, "enqueue-failed"),
        (KeyError("bug"), 500, "internal"),
    ],
)
def test_a_jobs_error_is_recorded_by_the_table(exc: BaseException, status: int, slug: str) -> None:
    p = problem_for(exc)
    assert (p["status"], p["type"].rsplit("/", 1)[1]) == (status, slug)
    if slug == "internal":
        assert "KeyError" in p["detail"] and "Traceback" not in p["detail"]


def test_celery_time_limits_are_the_time_limit_row() -> None:
    p = job_problem(SoftTimeLimitExceeded())
    assert p["status"] == 504 and p["type"].endswith("/time-limit") and "ETM_TASK_SOFT_TIME_LIMIT" in p["detail"]
    assert kind_of(IdempotencyKeyReused("x")) == (422, "idempotency-key-reused", "Invalid request")


# -- submitting --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_registry(
    tmp_path_factory: pytest.TempPathFactory, family_onnx: list[Path], dataset_dir: Path
) -> tuple[ArtifactStore, dict[str, Any]]:
    root = tmp_path_factory.mktemp("reg")
    store = ArtifactStore(str(root / "store"))
    reg = Registry(store).for_tenant("t1")
    meta = json.loads(family_onnx[0].with_name(family_onnx[0].name + ".json").read_text())
    model, _ = reg.ingest_model(family_onnx[0], "run0.onnx", ModelMetadata.model_validate(meta))
    archive = root / "tiny.zip"
    archive.write_bytes(zip_folder(dataset_dir.parent))
    dataset, _ = reg.ingest_dataset(archive, "tiny.zip", ArchiveLimits(), root)
    body = {"candidates": [{"name": "a", "models": [model["id"]]}], "dataset": dataset["id"], "max_images": 8}
    return store, body


class Sent(list):
    def __call__(self, name: str, kwargs: dict[str, Any], *, queue: str, task_id: str) -> None:
        self.append((name, kwargs, queue, task_id))


def test_submit_records_the_job_sends_once_and_replays_its_key(
    client: redis.Redis, tenant_registry: tuple[ArtifactStore, dict[str, Any]]
) -> None:
    store, body = tenant_registry
    jobs = JobStore(client, store, prefix=f"t{time.time_ns()}:")
    settings = Settings(job_queue="cpu")
    sent = Sent()
    reg = Registry(store).for_tenant("t1")

    def go(b: dict[str, Any], key: str | None = "k1") -> Any:
        return submit(b, tenant="t1", settings=settings, jobs=jobs, registry=reg, send=sent, idempotency_key=key)

    first = go(body)
    assert not first.replayed and not first.cached and first.job.status == "queued" and first.job.tenant == "t1"
    assert sent == [("etm.run_job", {"job_id": first.job.id}, "cpu", f"{first.job.id}:run")]
    assert jobs.get_for(first.job.id, "t1") == first.job and jobs.get_for(first.job.id, "t2") is None
    again = go(body)
    assert again.replayed and again.job.id == first.job.id and len(sent) == 1
    with pytest.raises(IdempotencyKeyReused, match="different job body"):
        go(body | {"seed": 3})
    with pytest.raises(UnknownReference):
        go(body | {"dataset": "d-missing"}, key="k2")
    assert jobs.idempotency_binding("k2", "t1") is None  # a refused request binds no key

    def refuse(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(EnqueueFailed):
        submit(body | {"seed": 4}, tenant="t1", settings=settings, jobs=jobs, registry=reg, send=refuse)
    (failed,), _ = jobs.list("failed", 10, None, "t1")
    assert public_job(failed)["error"]["type"].endswith("/enqueue-failed")
    assert jobs.get(failed.id) == failed and store.exists(jobs.final_key(failed.id))


def test_a_cached_result_is_answered_without_sending(
    client: redis.Redis, tenant_registry: tuple[ArtifactStore, dict[str, Any]]
) -> None:
    store, body = tenant_registry
    jobs = JobStore(client, store, prefix=f"t{time.time_ns()}:")
    reg = Registry(store).for_tenant("t1")
    cache_key = check_spec(reg, EvaluationSpec.model_validate(body)).cache_key
    jobs.results.publish(cache_key, b'{"report": 1}', b"a,b\n", {"curves.json": b"{}"})
    sent = Sent()
    done = submit(body, tenant="t1", settings=Settings(), jobs=jobs, registry=reg, send=sent)
    assert done.cached and done.job.status == "succeeded" and done.job.cache_hit and sent == []
    assert jobs.get_report(cache_key) == b'{"report": 1}'
    assert jobs.results.artifacts(cache_key) == [{"name": "curves.json", "bytes": 2, "media_type": "application/json"}]
