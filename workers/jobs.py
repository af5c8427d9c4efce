"""Running a job: turn its record into calls of the domain's evaluation, report progress, store
the result. No maths here, and no Celery either: ``workers.tasks`` wraps these functions. Records,
results and problems are the jobs layer's (``jobs.*``); nothing here knows the HTTP API.

Every entry point is idempotent, keyed by the job id: a job that already ended is left alone, a
shard whose partial result is in the store is not recomputed, and a result already in the store
(same cache key) is reused. Workers never trust the stored spec: it is re-validated
(``EvaluationSpec.model_validate``) and its ids are checked against the registry again.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from etm.errors import BadInput, Canceled, ModelRuntimeError
from etm.salience.progress import STEP_PREFIX
from etm.sandbox import Outcome, limits_for
from etm.sandbox import calls as sandbox_calls
from etm.sandbox.calls import Inputs
from etm.sandbox.files import read_bytes
from etm.settings import Settings
from etm.spec import EvaluationSpec
from jobs.admission import CheckedSpec, check_spec
from jobs.errors import TimeLimit, WorkerLost
from jobs.job_store import JobStore
from jobs.problems import problem_for
from jobs.records import JobRecord, Progress, Step
from jobs.registry import Registry
from jobs.results import ResultStore
from jobs.storage import ArtifactStore, NotFound
from jobs.webhooks import deliver
from workers.lease import hold

log = logging.getLogger("etm.worker")
MAX_REPORT_BYTES = 256 * 2**20  # a report is summaries and curves; per-image rows are in the CSV

def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client that rides out a Redis restart: commands failing to connect are retried with backoff
    for about ``ETM_WORKER_REDIS_RETRY_SECONDS``, so a running job waits for Redis instead of failing."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    cap = 2.0
    retries = int(settings.worker_redis_retry_seconds / cap) + 5  # the first few waits are shorter than cap
    return redis.Redis.from_url(
        settings.redis_py_url,
        socket_connect_timeout=2,
        socket_timeout=30,
        retry=Retry(ExponentialBackoff(cap=cap, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass
class WorkerEnv:
    """What a worker process needs, built once per process."""

    settings: Settings
    redis: redis.Redis
    store: ArtifactStore
    registry: Registry
    jobs: JobStore

    @property
    def results(self) -> ResultStore:
        return self.jobs.results

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerEnv:
        client = redis_client(settings)
        store = ArtifactStore(settings.store_url)
        jobs = JobStore(client, store, settings.key_prefix, settings.job_ttl_seconds, settings.report_ttl_seconds)
        return cls(settings, client, store, Registry(store), jobs)

    def inputs(self, checked: CheckedSpec) -> Inputs:
        """The job's models and datasets as local files, resolved as its tenant sees them (its uploads and
        the built-ins); the only host paths its sandbox will see."""
        reg = self.registry.for_tenant(checked.tenant)
        spec, s = checked.spec, self.settings
        models = {m: reg.model_path(m, s.cache_dir) for c in spec.candidates for m in c.models}
        refs = [spec.dataset] + ([spec.ood_dataset] if spec.ood_dataset is not None else [])
        datasets = {d: reg.dataset_path(d, s.cache_dir, s.benchmark_data_dir) for d in refs}
        return Inputs(models, datasets)

    def sandboxed(
        self, checked: CheckedSpec, job_id: str, progress: ProgressReporter, scratch: Path, **kwargs: Any
    ) -> Outcome:
        """One evaluation step of the job in the model sandbox (killed on cancel and at the time limit)."""
        gpu = _has_gpu()
        return sandbox_calls.evaluate(
            checked.spec,
            self.inputs(checked),
            self.settings,
            limits_for(self.settings, "job", gpu=gpu),
            progress=progress,
            should_cancel=cancel_check(self.jobs, job_id),
            scratch=scratch,
            gpu=gpu,
            **kwargs,
        )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class JobEnded(Exception):
    """The job reached a terminal state elsewhere (or vanished); stop quietly."""


# -- progress --------------------------------------------------------------------------------------


class ProgressReporter:
    """Throttled progress writer: at most one write per ``interval`` seconds, always at stage changes
    and at the end of a stage. Stages map onto one overall fraction:

    in-set ``[0, a]``, out-of-set ``[a, b]``, artifacts ``[b, 1]`` (``a`` = 0.8 with an out-of-set
    dataset, else 0.9; ``b`` = 0.95 with one, else 0.9).
    """

    def __init__(
        self, jobs: JobStore, job_id: str, interval: float, has_ood: bool, inset_total: int, shard: int = 0
    ) -> None:
        self.jobs, self.job_id, self.interval = jobs, job_id, interval
        self.inset_total, self.shard = inset_total, shard
        a, b = (0.8, 0.95) if has_ood else (0.9, 0.9)
        self.ranges = {"in-set": (0.0, a), "out-of-set": (a, b), "artifacts": (b, 1.0)}
        self.stage: str | None = None
        self.last = 0.0
        self.step_key: tuple[str, int] | None = None
        self.step_start = self.step_last = 0.0
        self.step_done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        t = time.monotonic()
        if stage.startswith(STEP_PREFIX):
            self._step(stage[len(STEP_PREFIX):], done, total, t)
            return
        if stage == self.stage and done < total and t - self.last < self.interval:
            return
        self.stage, self.last = stage, t
        lo, hi = self.ranges.get(stage, (0.0, 0.0))
        try:
            if stage == "in-set":
                self.jobs.write_shard_progress(self.job_id, self.shard, done, self.inset_total, stage, lo, hi)
            else:
                frac = lo + (hi - lo) * (done / total if total else 1.0)
                self.jobs.write_progress(self.job_id, stage, done, total, frac)
        except redis.RedisError as exc:  # progress is best effort; the job goes on
            log.warning("job %s: progress not written: %s", self.job_id, exc)


    def _step(self, method: str, done: int, total: int, t: float) -> None:
        """Progress inside one salience call, kept apart from ``progress`` (its own field: concurrent shards
        never read-modify-write the combined progress) with the call's ETA at its rate so far."""
        key = (method, total)
        if key != self.step_key or done < self.step_done:  # a new call
            self.step_key, self.step_start, self.step_last = key, t, 0.0
        self.step_done = done
        if done < total and t - self.step_last < self.interval:
            return
        self.step_last = t
        elapsed = t - self.step_start
        eta = round(elapsed / done * (total - done), 1) if done > 0 and elapsed > 0 else None
        step = Step(method=method, done=done, total=total, eta_seconds=eta, updated_at=time.time())
        try:
            self.jobs.set_fields(self.job_id, step=step)
        except redis.RedisError as exc:
            log.warning("job %s: progress not written: %s", self.job_id, exc)


def cancel_check(jobs: JobStore, job_id: str) -> Callable[[], bool]:
    def should_cancel() -> bool:
        try:
            return jobs.cancel_requested(job_id)
        except redis.RedisError:
            return False  # keep computing through a Redis hiccup

    return should_cancel


# -- ends of a job ---------------------------------------------------------------------------------


def job_problem(exc: BaseException) -> dict[str, Any]:
    """The problem a job's error is recorded as (``jobs.problems``; Celery's time limits are ``TimeLimit``)."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    from etm.settings import get_settings

    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        s = get_settings()
        exc = TimeLimit.of(s.task_soft_time_limit, s.task_time_limit)
    return problem_for(exc)


def fail(env: WorkerEnv, job_id: str, err: dict[str, Any]) -> None:
    t = time.time()
    if _ours(env, job_id, "failed", t, env.jobs.transition(
        job_id, "failed", ("queued", "running"), error=err, finished_at=t, updated_at=t
    )):
        log.warning("job %s failed: %s", job_id, err["detail"])
        _after_end(env, job_id)


def cancel(env: WorkerEnv, job_id: str) -> None:
    t = time.time()
    if _ours(env, job_id, "canceled", t, env.jobs.transition(
        job_id, "canceled", ("queued", "running"), finished_at=t, updated_at=t
    )):
        log.info("job %s canceled", job_id)
        _after_end(env, job_id)


def _ours(env: WorkerEnv, job_id: str, to: str, finished_at: float, done: bool) -> bool:
    """Whether this process ended the job. A transition whose reply was lost in a Redis restart is
    retried by the client and then finds the job already moved: by us, when it carries our time stamp."""
    if done:
        return True
    job = env.jobs.get(job_id)
    return job is not None and job.status == to and job.finished_at == finished_at


def _after_end(env: WorkerEnv, job_id: str) -> None:
    env.jobs.snapshot(job_id)
    env.jobs.drop_shard_progress(job_id)
    job = env.jobs.get(job_id)
    if job is not None and job.callback_url:
        deliver(env.settings, env.jobs, job)  # signed, retried, allowed hosts only (jobs.webhooks)


# -- the steps -------------------------------------------------------------------------------------


def _load(env: WorkerEnv, job_id: str, part: str) -> tuple[JobRecord, CheckedSpec] | None:
    """The job and its re-checked spec, or None when there is nothing (more) to do."""
    job = env.jobs.get(job_id)
    if job is None:
        log.warning("job %s: no record (expired?); dropping the task", job_id)
        return None
    if job.ended:
        log.info("job %s already %s; nothing to do for %s", job_id, job.status, part)
        return None
    n = env.jobs.incr_delivery(job_id, part)
    if n > env.settings.max_deliveries:
        lost = WorkerLost(
            f"{part} of this job was delivered {n - 1} times without finishing (a worker process died while "
            "running it, e.g. out of memory); giving up (ETM_MAX_DELIVERIES)"
        )
        fail(env, job_id, problem_for(lost))
        return None
    if job.cancel_requested:
        cancel(env, job_id)
        return None
    try:
        spec = EvaluationSpec.model_validate(job.spec)
        checked = check_spec(env.registry.for_tenant(job.tenant), spec)
    except (ValidationError, BadInput) as exc:
        fail(env, job_id, problem_for(exc))
        return None
    return job, checked


def plan_shards(n_images: int, batch_size: int, shard_images: int, max_shards: int) -> int:
    """How many batch-aligned shards a job of ``n_images`` is split into (1: not split)."""
    if n_images <= shard_images:
        return 1
    n_batches = math.ceil(n_images / batch_size)
    return max(1, min(math.ceil(n_images / shard_images), max_shards, n_batches))


def _cached(env: WorkerEnv, job_id: str, checked: CheckedSpec) -> bool:
    if not env.settings.result_cache or not env.results.complete(checked.cache_key):
        return False
    t = time.time()
    done = env.jobs.transition(
        job_id,
        "succeeded",
        ("queued", "running"),
        cache_hit=True,
        cache_key=checked.cache_key,
        finished_at=t,
        updated_at=t,
        progress=Progress.finished(t),
    )
    if _ours(env, job_id, "succeeded", t, done):
        _after_end(env, job_id)
    return True


def _leased(part: Callable[..., str]) -> Callable[[Callable[..., None]], Callable[..., bool]]:
    """Run an entry point only while holding the lease on its part of the job (``workers.lease``):
    a duplicate delivery of a message whose first delivery is still running does nothing (returns False)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., bool]:
        @functools.wraps(fn)
        def run(env: WorkerEnv, job_id: str, *args: Any) -> bool:
            key = env.jobs.lease_key(job_id, part(*args))
            gone = functools.partial(env.jobs.cancel_requested, job_id)  # ended or canceled meanwhile
            with hold(env.redis, key, env.settings.job_lease_seconds, gone) as owned:
                if owned:
                    fn(env, job_id, *args)
                return owned

        return run

    return wrap


@_leased(lambda *_: "job")
def run_job(env: WorkerEnv, job_id: str, dispatch_shards: Callable[[str, int], None]) -> None:
    """Entry point of a job: cache check, then compute here or fan out into shards."""
    loaded = _load(env, job_id, "job")
    if loaded is None:
        return
    job, checked = loaded
    if _cached(env, job_id, checked):
        return
    t = time.time()
    env.jobs.transition(
        job_id,
        "running",
        ("queued", "running"),
        started_at=job.started_at or t,
        updated_at=t,
        cache_key=checked.cache_key,
        progress=Progress.at("loading", 0, 0, 0.0, t),
    )
    s = env.settings
    shards = plan_shards(checked.n_images, checked.spec.batch_size, s.shard_images, s.max_shards)
    if shards > 1:
        if job.dispatched:
            log.info("job %s: shards already dispatched", job_id)
            return
        env.jobs.set_fields(job_id, shards=shards)
        dispatch_shards(job_id, shards)
        env.jobs.set_fields(job_id, dispatched=True)
        log.info("job %s: %d images in %d shards", job_id, checked.n_images, shards)
        return
    _guarded(env, job_id, lambda: _compute_whole(env, job_id, checked))


def _compute_whole(env: WorkerEnv, job_id: str, checked: CheckedSpec) -> None:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="etm-job-") as tmp:
        out = env.sandboxed(checked, job_id, _progress(env, job_id, checked), Path(tmp), artifacts=True)
        complete(env, job_id, checked, out, t0)


def _progress(env: WorkerEnv, job_id: str, checked: CheckedSpec, shard: int = 0) -> ProgressReporter:
    total = checked.n_images * len(checked.spec.candidates)
    return ProgressReporter(
        env.jobs, job_id, env.settings.progress_interval, checked.spec.ood_dataset is not None, total, shard
    )


@_leased(lambda index, count: f"shard{index}")
def run_shard(env: WorkerEnv, job_id: str, index: int, count: int) -> None:
    """The in-set pass over shard ``index`` of ``count``; its Partial goes to the store."""
    loaded = _load(env, job_id, f"shard{index}")
    if loaded is None or env.results.has_partial(job_id, index, count):
        return
    _, checked = loaded

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="etm-part-") as tmp:
            progress = _progress(env, job_id, checked, shard=index)
            out = env.sandboxed(checked, job_id, progress, Path(tmp) / "sandbox", mode="inset", shard=(index, count))
            # Stored as bytes, not parsed here: only the sandboxed merge reads it (allow_pickle=False), so a
            # crafted archive never meets a parser in this process.
            env.results.put_partial(job_id, index, count, read_bytes(out.scratch / "out", "partial.npz"))

    _guarded(env, job_id, work)


@_leased(lambda count: "finish")
def finish_job(env: WorkerEnv, job_id: str, count: int) -> None:
    """Merge the shards' partials, run the out-of-set pass, summarise, store the result."""
    loaded = _load(env, job_id, "finish")
    if loaded is None:
        return
    job, checked = loaded

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="etm-merge-") as tmp:
            parts = []
            for i in range(count):
                try:
                    parts.append(env.results.fetch_partial(job_id, i, count, Path(tmp) / "partials" / f"{i}.npz"))
                except NotFound as exc:
                    raise RuntimeError(f"the result of shard {i} of {count} is missing from the store") from exc
            progress = _progress(env, job_id, checked)
            out = env.sandboxed(
                checked, job_id, progress, Path(tmp) / "sandbox", mode="finish", partials=parts, artifacts=True
            )
            complete(env, job_id, checked, out, job.started_at or time.time())
        env.results.drop_partials(job_id)

    _guarded(env, job_id, work)


def _guarded(env: WorkerEnv, job_id: str, work: Callable[[], None]) -> None:
    """Run ``work``; turn what it raises into the job's end state. Only bugs in this module escape."""
    from celery.exceptions import SoftTimeLimitExceeded

    try:
        work()
    except Canceled:
        cancel(env, job_id)
    except JobEnded:
        pass
    except (BadInput, ModelRuntimeError, ValidationError, SoftTimeLimitExceeded) as exc:
        fail(env, job_id, job_problem(exc))
    except Exception as exc:  # noqa: BLE001 - the job must end, whatever happened
        log.exception("job %s: unexpected error", job_id)
        fail(env, job_id, job_problem(exc))


def complete(env: WorkerEnv, job_id: str, checked: CheckedSpec, outcome: Outcome, started: float) -> None:
    """Publish what the sandbox wrote (report, CSV, artifacts) under the cache key; mark the job succeeded.

    The files are read without following links and the report must parse as JSON before anything is
    stored; the report is written last, so a result in the store is always complete.
    """
    key = checked.cache_key
    out = outcome.scratch / "out"
    report = read_bytes(out, "report.json", MAX_REPORT_BYTES)  # it also goes to Redis
    json.loads(report)
    artifacts = sandbox_calls.read_artifacts(out, outcome.result.get("artifacts") or [])
    env.results.publish(key, report, read_bytes(out, "per_image.csv"), artifacts)
    env.jobs.put_report(key, report)
    t = time.time()
    seconds = max(t - float(started), 1e-6)
    images = checked.n_images * len(checked.spec.candidates)
    done = env.jobs.succeed(  # the metrics count the job in the same atomic step
        job_id,
        seconds,
        images,
        finished_at=t,
        updated_at=t,
        cache_hit=False,
        duration_seconds=round(seconds, 3),
        images_per_second=round(images / seconds, 3),
        progress=Progress.finished(t),
    )
    if _ours(env, job_id, "succeeded", t, done):
        log.info("job %s succeeded in %.1f s", job_id, seconds)
        _after_end(env, job_id)

