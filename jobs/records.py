"""The job record: what Redis holds for a job (``P job:<id>``, one JSON value per hash field) and what the
store keeps as its final snapshot (``jobs/<id>.json``).

The record is typed here once; the HTTP view (``jobs.view``) is derived from it. The encoding is
byte-compatible with the untyped records written before: each field is ``json.dumps`` of its plain value,
and a delivery count is the integer field ``deliveries:<part>`` (``HINCRBY``). Fields never set are not
written, so a record keeps exactly the fields it was given.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "canceled"})
DEFAULT_TENANT = "local"  # with auth off, and the owner of records written before tenants existed
DELIVERIES = "deliveries:"  # field prefix of the per-part delivery counters

JOB_ID_RE = re.compile(r"j-[0-9a-f]{20}")


def tenant_of(job: Mapping[str, Any]) -> str:
    """The owner of a plain (not yet typed) job record."""
    return job.get("tenant") or DEFAULT_TENANT


def new_job_id() -> str:
    return "j-" + uuid.uuid4().hex[:20]


class Progress(BaseModel):
    """Where the job stands overall; ``updated_at`` is a Unix time."""

    stage: str
    done: int
    total: int
    fraction: float
    updated_at: float | None = None

    @classmethod
    def at(cls, stage: str, done: int, total: int, fraction: float, t: float) -> Progress:
        return cls(stage=stage, done=done, total=total, fraction=fraction, updated_at=t)

    @classmethod
    def finished(cls, t: float) -> Progress:
        return cls.at("done", 1, 1, 1.0, t)


class Step(BaseModel):
    """Inside one long salience call: its passes so far and the time left at its rate so far."""

    method: str
    done: int
    total: int
    eta_seconds: float | None = None
    updated_at: float | None = None


class CallbackOutcome(BaseModel):
    """How the delivery of the job's callback went."""

    attempts: int
    status_code: int | None = None
    error: str | None = None
    delivered: bool = False
    delays_seconds: list[float] = Field(default_factory=list)


class JobRecord(BaseModel):
    """A job as Redis and the store keep it. Times are Unix times; ``error`` is a problem object."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: JobState
    tenant: str | None = None  # None: written before tenants existed (its owner is DEFAULT_TENANT)
    seq: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    spec: dict[str, Any] | None = None  # the canonical spec; workers re-validate it, never trust it
    callback_url: str | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    n_images: int | None = None
    shards: int | None = None
    dispatched: bool = False
    queue: str | None = None
    idempotency_key: str | None = None
    cancel_requested: bool = False
    error: dict[str, Any] | None = None
    progress: Progress | None = None
    step: Step | None = None
    duration_seconds: float | None = None
    images_per_second: float | None = None
    callback: CallbackOutcome | None = None
    deliveries: dict[str, int] = Field(default_factory=dict)  # part -> deliveries (``deliveries:<part>``)

    @model_validator(mode="before")
    @classmethod
    def _gather_deliveries(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(str(k).startswith(DELIVERIES) for k in data):
            data = dict(data)
            counts = {k[len(DELIVERIES):]: data.pop(k) for k in list(data) if k.startswith(DELIVERIES)}
            data["deliveries"] = {**data.get("deliveries", {}), **counts}
        return data

    @property
    def owner(self) -> str:
        """The tenant the job belongs to."""
        return self.tenant or DEFAULT_TENANT

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    # -- encoding ------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """The fields that were set, as plain JSON values with the delivery counters spread out: the store
        snapshot, and (each value JSON-encoded) the Redis hash."""
        out = self.model_dump(mode="json", exclude_unset=True)
        for part, n in out.pop("deliveries", {}).items():
            out[DELIVERIES + part] = n
        return out

    def to_redis(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in self.flat().items()}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> JobRecord:
        return cls.model_validate({k.decode(): json.loads(v) for k, v in raw.items()})


def encode_fields(**fields: Any) -> dict[str, str]:
    """Record fields for ``HSET``, each checked against its type on ``JobRecord`` and JSON-encoded as the record
    encodes it (a typo'd or mistyped field is a ValidationError here, not a silent new hash field)."""
    unknown = set(fields) - set(JobRecord.model_fields) - {"deliveries"}
    if unknown or "deliveries" in fields:
        raise ValueError(f"not job record fields: {sorted(unknown | ({'deliveries'} & set(fields)))}")
    checked = JobRecord.model_validate({"id": "j-0", "status": "queued", **fields})
    dumped = checked.model_dump(mode="json", include=set(fields))
    return {k: json.dumps(dumped[k]) for k in fields}
