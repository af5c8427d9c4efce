"""The one settings object of the service, read from ``ETM_*`` environment variables.

The API, the workers, the devserver and the demo all read this class; ``docker-compose.yml`` and
the README's configuration table use the same names (a test checks the compose file). Paths may be
relative: they are taken relative to the working directory of the process.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Queue = Literal["cpu", "gpu"]


class Settings(BaseSettings):
    """Every knob of the service. Environment variable = ``ETM_`` + the field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="ETM_", extra="ignore", case_sensitive=False)

    # -- where things live ---------------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis for the job records, the Celery broker and the result backend "
        "(redis://, rediss://, unix:///path.sock or redis+socket:///path.sock). Unset: the devserver "
        "starts an embedded Redis; the API and the workers refuse to start.",
    )
    key_prefix: str = Field("etm:", description="Prefix of every key this service writes to Redis.")
    store_url: str = Field(
        "var/store",
        description="Artifact store: a local folder or any fsspec URL (s3://bucket/etm, gs://...). Models, "
        "dataset archives, reports, artifacts and shard partials live here, content-addressed.",
    )
    cache_dir: Path = Field(
        Path("var/cache"), description="Local folder where workers materialise models and datasets from the store."
    )
    var_dir: Path = Field(
        Path("var"), description="Devserver state: the embedded Redis database, the demo's devserver log."
    )
    benchmark_data_dir: Path = Field(
        Path("var/benchmark"),
        description="Generated benchmark datasets (built-ins); the devserver generates them when missing.",
    )
    benchmark_models_dir: Path = Field(
        Path("benchdata/models"), description="Committed benchmark model families (built-ins)."
    )
    register_builtins: bool = Field(True, description="Register the benchmark datasets and models as built-ins.")
    plugins: str = Field(
        "",
        description="Comma-separated Python modules that register measures and salience methods of their own "
        "(e.g. `tests.toys`), imported by the API, the workers and the sandboxed model process (etm.plugins).",
    )

    # -- HTTP ----------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Interface the devserver's API listens on (`make run`).")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the devserver's API listens on (`make run`).")
    api_url: str = Field(
        "http://127.0.0.1:8000", description="Where `make demo` finds a running service (else it starts one)."
    )
    max_model_bytes: int = Field(512 * 2**20, ge=1, description="Largest accepted model upload, in bytes.")
    max_dataset_bytes: int = Field(2 * 2**30, ge=1, description="Largest accepted dataset archive, in bytes.")
    max_archive_members: int = Field(200_000, ge=1, description="Most entries a dataset archive may hold.")
    max_extracted_bytes: int = Field(
        8 * 2**30, ge=1, description="Largest total size of a dataset archive once extracted, in bytes."
    )
    upload_dir: Path | None = Field(None, description="Temporary folder for uploads; unset: the system's.")
    max_json_bytes: int = Field(
        2**20,
        ge=1,
        description="Largest request body of a /v1 operation other than the uploads (job submissions are JSON), in "
        "bytes: a larger Content-Length is refused at once and a chunked body as soon as it passes this (413). "
        "Uploads have ETM_MAX_MODEL_BYTES and ETM_MAX_DATASET_BYTES.",
    )
    # -- connections (api.httpserver, the uvicorn protocol; docs/SERVICE.md, Running it) --------------
    header_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a complete request line and headers (from its opening, or "
        "from the end of the previous answer); then it is closed (slow-header clients).",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest pause in a request body while the API waits for it; then 408 and the connection is "
        "closed (stalled uploads and submissions).",
    )
    keep_alive_timeout_seconds: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open between requests."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections (or requests in progress) per API process beyond which requests are "
        "answered 503 with Retry-After at once.",
    )
    # -- upload hardening and runtime faults (see docs/SERVICE.md, Uploads) ----------------------
    max_compression_ratio: float = Field(
        200.0,
        gt=1,
        description="Largest extracted/compressed size ratio of a dataset archive member (and of the whole "
        "archive) once it has inflated past 1 MiB; beyond it the upload is refused as a zip bomb.",
    )
    dataset_index_dir: Path | None = Field(
        None,
        description="Where the datasets' validation indexes are kept (read by etm.cache_paths from the environment); "
        "default $XDG_CACHE_HOME or ~/.cache, then explain-to-me/dataset-index. Never inside a dataset folder.",
    )
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest width x height of a dataset image; larger images are skipped and listed "
        "(decompression-bomb guard).",
    )
    ort_arena_max_bytes: int = Field(
        0,
        ge=0,
        description="Cap on ONNX Runtime's CPU memory arena per worker process, in bytes (0: no cap). A batch "
        "that does not fit is halved and retried.",
    )
    retry_after_seconds: int = Field(2, ge=1, description="Retry-After sent with 202 and 409 job answers.")
    list_limit_max: int = Field(200, ge=1, description="Largest page size of list endpoints.")
    idempotency_ttl_seconds: int = Field(86_400, ge=1, description="How long an Idempotency-Key is remembered.")

    # -- jobs and workers ----------------------------------------------------------------------
    job_queue: Queue = Field(
        "cpu",
        description="Queue the API sends jobs to (cpu or gpu); shards follow their job's queue. Also the queue "
        "`python -m workers` consumes unless -Q says otherwise.",
    )
    shard_images: int = Field(
        2000, ge=1, description="Jobs with more in-set images than this are split into shards over images."
    )
    max_shards: int = Field(32, ge=1, description="Upper bound on the number of shards of one job.")
    task_soft_time_limit: int = Field(
        3 * 3600, ge=1, description="Seconds after which a task is asked to stop (the job fails with a message)."
    )
    task_time_limit: int = Field(
        3 * 3600 + 300, ge=1, description="Seconds after which a task's process is killed (must exceed the soft one)."
    )
    visibility_timeout: int = Field(
        4 * 3600,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged task; must exceed the hard time limit.",
    )
    max_deliveries: int = Field(
        3, ge=1, description="Deliveries of one task (worker lost, redelivered) before its job is failed."
    )
    torch_threads: int = Field(
        1, ge=1, description="Intra-op threads of torch and ONNX Runtime in worker processes (1 is fastest on 2 cores)."
    )
    worker_concurrency: int = Field(
        1, ge=1, description="Pool processes of a worker started with `python -m workers` (and the devserver's)."
    )
    progress_interval: float = Field(
        0.5, ge=0.0, description="Least seconds between progress writes to a job record (stage changes always)."
    )
    result_cache: bool = Field(True, description="Answer repeated jobs from the result cache.")
    job_ttl_seconds: int = Field(30 * 86_400, ge=60, description="Lifetime of job records in Redis.")
    report_ttl_seconds: int = Field(
        7 * 86_400, ge=60, description="Lifetime of the Redis copy of a report (the store keeps the original)."
    )
    worker_redis_retry_seconds: float = Field(
        60.0,
        ge=0.0,
        description="How long a worker keeps retrying a Redis command while Redis is unreachable (a restart) "
        "before the task gives up; running jobs wait for Redis instead of failing.",
    )
    job_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="Lease a running task holds on its part of a job (renewed every third of it): a second "
        "delivery of the same message finds it held and does nothing. Must be below the visibility timeout.",
    )

    # -- the model sandbox (docs/SECURITY.md) ------------------------------------------------------
    sandbox: Literal["bwrap", "process"] = Field(
        "bwrap",
        description="How model loads and runs are confined: `bwrap` (bubblewrap: no network, read-only view of "
        "the job's inputs only, empty environment, limits) or `process` (a separate process with the limits but "
        "no namespaces: only for hosts without user namespaces and trusted models).",
    )
    sandbox_memory_bytes: int = Field(
        8 * 2**30,
        ge=0,
        description="Address-space limit of a sandboxed model process on CPU workers (0: none; GPU workers use "
        "none, CUDA reserves large virtual ranges: bound them with the container's memory limit).",
    )
    sandbox_inspect_seconds: float = Field(
        60.0, gt=0, description="Wall-clock budget of the sandboxed inspection of an uploaded model (checks + probe)."
    )
    inspect_queue: str = Field(
        "inspect",
        description="Queue of the upload inspections the API sends to workers; `python -m workers` consumes it "
        "beside its job queue unless -Q says otherwise.",
    )
    inspect_wait_seconds: float = Field(
        120.0, gt=0, description="How long an upload waits for a worker's inspection before answering 503."
    )

    # -- webhooks (a job's callback_url) -------------------------------------------------------
    callback_timeout: float = Field(
        10.0,
        gt=0,
        description="Total seconds one attempt to POST a job to its callback_url may take (connect, send, the "
        "receiver's whole answer): a receiver that answers slowly is cut off at this deadline.",
    )
    api_callback_threads: int = Field(
        4,
        ge=1,
        description="Threads of each API process that send the callbacks of jobs it ends (canceled while queued, "
        "cache hits), apart from the request threads; further callbacks wait for one (at most 1000 pending).",
    )
    callback_attempts: int = Field(
        3, ge=1, description="Attempts to deliver a job's callback (network errors, 5xx and 429 are retried)."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key that signs every callback (header X-ETM-Signature: t=<unix time>,v1=<hex> "
        "over `<t>.<body>`), at least 16 characters. Unset: jobs with a callback_url are refused (422).",
    )
    webhook_backoff_seconds: float = Field(
        1.0, ge=0.0, description="Delay before the second callback attempt; doubles after each further attempt."
    )
    webhook_backoff_max_seconds: float = Field(30.0, ge=0.0, description="Longest delay between callback attempts.")
    webhook_allow_private: bool = Field(
        False,
        description="Allow callbacks to private, loopback, link-local, multicast and reserved addresses "
        "(otherwise refused at submission and at delivery).",
    )
    webhook_allowed_hosts: str = Field(
        "",
        description="Comma-separated host names (`hooks.example.com`, `.example.com` for sub-domains) and CIDRs "
        "(`10.0.0.0/8`). Set: callbacks go only to these hosts, private addresses included. Empty: to any host "
        "whose addresses are all public.",
    )

    @model_validator(mode="after")
    def _lease_below_visibility(self) -> Settings:
        if self.job_lease_seconds >= self.visibility_timeout:
            raise ValueError(
                f"ETM_JOB_LEASE_SECONDS ({self.job_lease_seconds}) must be below ETM_VISIBILITY_TIMEOUT "
                f"({self.visibility_timeout}) so that a task redelivered after its worker died finds the lease expired"
            )
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("ETM_WEBHOOK_SECRET must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _allowed_hosts_parse(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ValueError(f"ETM_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a CIDR ({exc})") from exc
            elif not re.fullmatch(r"\.?[A-Za-z0-9_.:\[\]-]+", entry):
                raise ValueError(f"ETM_WEBHOOK_ALLOWED_HOSTS: {entry!r} is neither a host name nor a CIDR")
        return value
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of every process.")

    # -- access control ------------------------------------------------------------------------
    auth: Literal["keys", "off"] = Field(
        "keys",
        description="`keys`: every /v1 request needs `Authorization: Bearer <API key>` (keys made with "
        "`etm-admin keys create`). `off`: no keys, one tenant (`local`); only on a loopback address: the "
        "devserver refuses to start otherwise and the API answers 403 to any peer that is not loopback. "
        "`make run` defaults to `off` on 127.0.0.1.",
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0.0,
        description="How long an API process trusts a verified key before checking it (and its revocation) "
        "again in the store: a revoked key stops working within this many seconds.",
    )
    auth_failures_per_key_per_minute: int = Field(
        10,
        ge=0,
        description="Failed authentications (unknown, wrong or revoked key) per minute per key id before further "
        "attempts with that id get 429 without being checked (a burst of this many passes; an attempt while "
        "throttled restarts the wait); keys this API process verified before keep working. 0: no limit.",
    )
    auth_failures_per_address_per_minute: int = Field(
        30,
        ge=0,
        description="Failed authentications per minute per client address (as uvicorn reports it) before further "
        "attempts from it get 429 without being checked. 0: no limit.",
    )
    auth_verify_threads: int = Field(
        4,
        ge=1,
        description="Threads of each API process that verify API keys (argon2, ~20 ms and 19 MiB each), apart from "
        "the request threads.",
    )
    rate_uploads_per_minute: int = Field(
        60,
        ge=0,
        description="Model and dataset uploads per minute per API key (per tenant with auth off); 0: no limit.",
    )
    rate_jobs_per_minute: int = Field(
        120, ge=0, description="Job submissions per minute per API key (per tenant with auth off); 0: no limit."
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                f"ETM_TASK_TIME_LIMIT ({self.task_time_limit}) must exceed ETM_TASK_SOFT_TIME_LIMIT "
                f"({self.task_soft_time_limit}) so that a task can stop cleanly before it is killed"
            )
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"ETM_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed ETM_TASK_TIME_LIMIT "
                f"({self.task_time_limit}); otherwise Redis redelivers a task that is still running"
            )
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in ("redis", "rediss", "unix", "redis+socket"):
                raise ValueError(
                    f"ETM_REDIS_URL scheme {scheme!r} is not supported; use redis://host:port/db, rediss://, "
                    "unix:///path/to/redis.sock or redis+socket:///path/to/redis.sock"
                )
        return self

    # -- derived -------------------------------------------------------------------------------
    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "ETM_REDIS_URL is not set. Point it at a Redis (e.g. redis://127.0.0.1:6379/0) or start "
                "everything with `make run`, which embeds one."
            )
        return self.redis_url

    @property
    def redis_py_url(self) -> str:
        """The Redis URL in the form redis-py's ``from_url`` understands (``unix://`` for sockets)."""
        url = self.require_redis_url()
        if url.startswith("redis+socket://"):
            return "unix://" + url[len("redis+socket://") :]
        return url

    @property
    def celery_url(self) -> str:
        """The Redis URL in the form Celery/kombu understand (``redis+socket://`` for sockets)."""
        url = self.require_redis_url()
        if url.startswith("unix://"):
            return "redis+socket://" + url[len("unix://") :]
        return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings``)."""
    return Settings()
