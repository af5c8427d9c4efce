"""Request and response bodies of the v1 API (they make the OpenAPI document). A job's own view
(``Job``) is ``jobs.view``'s, which callbacks POST too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.examples import EXAMPLE_JOB
from etm.spec import EvaluationSpec
from etm.timestamps import IsoTime
from jobs.view import Job  # the job as clients see it: one model for GET and the callback body


class Capability(BaseModel):
    method: str
    available: bool
    reason: str = Field(..., description="Why the method can or cannot run on this model.")


class ModelWarning(BaseModel):
    code: str = Field(..., examples=["mean_std_0_255"])
    message: str = Field(..., description="What looks wrong in the metadata, from the metadata and the probe batch.")
    fix: str = Field(..., description="The likely fix.")


class ModelOut(BaseModel):
    """A registered model."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., examples=["m-0123456789abcdef", "builtin:xent/run0"])
    sha256: str
    format: str = Field(..., description="onnx or pt2")
    filename: str
    bytes: int
    metadata: dict[str, Any] = Field(
        ..., description="Effective metadata (explicit > sidecar > ONNX props > defaults)."
    )
    num_outputs: int
    capabilities: dict[str, Capability] = Field(..., description="Salience method -> availability and reason.")
    warnings: list[ModelWarning] = Field(
        default_factory=list,
        description="Likely metadata mistakes (e.g. mean/std on the 0-255 scale, outputs that are probabilities "
        "already), each with its fix; the model is registered all the same. Rules: docs/MODELS.md.",
    )
    builtin: bool = False
    family: str | None = Field(None, description="Built-in models: the family (training recipe).")
    run: int | None = Field(None, description="Built-in models: the run index within the family.")
    created_at: IsoTime | None = None


class ModelList(BaseModel):
    items: list[ModelOut]


class Family(BaseModel):
    """A built-in model family: the runs of one training recipe, usable as a candidate as is."""

    name: str = Field(..., examples=["xent"])
    models: list[str] = Field(..., examples=[["builtin:xent/run0", "builtin:xent/run1"]])


class FamilyList(BaseModel):
    items: list[Family]


class SkippedFile(BaseModel):
    path: str
    reason: str


_SKIPPED = "Skipped files and why: the first 100 (n_skipped counts them all)."
_BY_REASON = "How many files were skipped for each kind of reason (e.g. 'file not found')."


class SplitSummary(BaseModel):
    split: str | None = Field(..., description="Split name; null for a dataset without splits.")
    sha256: str
    n_images: int
    counts: dict[str, int] = Field(..., description="Usable images per class.")
    annotations: dict[str, Any]
    n_skipped: int
    skipped: list[SkippedFile] = Field(..., description=_SKIPPED)
    skipped_by_reason: dict[str, int] = Field(default_factory=dict, description=_BY_REASON)


class ArchiveSummary(BaseModel):
    sha256: str
    bytes: int
    format: str
    members: int
    files: int
    extracted_bytes: int
    root: str = Field(..., description="Folder of the dataset inside the archive ('.' = its top level).")
    n_skipped: int | None = Field(None, description="Archive entries not extracted (null: as many as listed).")
    skipped: list[SkippedFile] = Field(..., description="Archive entries not extracted, and why: the first 100.")
    skipped_by_reason: dict[str, int] = Field(default_factory=dict, description=_BY_REASON)


class DatasetOut(BaseModel):
    """A registered dataset."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., examples=["d-0123456789abcdef", "builtin:faces"])
    name: str
    sha256: str = Field(..., description="Content hash over all splits (independent of archive packing).")
    builtin: bool = False
    layout: str = Field(..., description="manifest, splits or classes")
    has_splits: bool
    default_split: str | None = Field(..., description="The split a job uses when it names none.")
    splits: list[SplitSummary]
    classes: list[str]
    n_images: int
    counts: dict[str, int] = Field(..., description="Usable images per class over all splits.")
    split_counts: dict[str, dict[str, int]] | None = Field(
        None, description="Entries listed per split and class, before validation."
    )
    annotations: dict[str, Any]
    n_skipped: int
    skipped: list[SkippedFile] = Field(..., description=_SKIPPED)
    skipped_by_reason: dict[str, int] = Field(default_factory=dict, description=_BY_REASON)
    archive: ArchiveSummary | None = None
    created_at: IsoTime | None = None


class DatasetList(BaseModel):
    items: list[DatasetOut]


class JobRequest(EvaluationSpec):
    """An evaluation job: an ``EvaluationSpec`` whose ``models`` are model ids and whose ``dataset`` and
    ``ood_dataset`` are dataset ids, plus an optional callback."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_JOB]})

    callback_url: str | None = Field(
        None,
        pattern=r"^https?://",
        max_length=2000,
        description="POSTed the final job (as GET /v1/jobs/{id} returns it) when the job ends, signed with "
        "HMAC-SHA256 (header X-ETM-Signature: t=<unix time>,v1=<hex> over `<t>.<body>`, key ETM_WEBHOOK_SECRET) and "
        "retried with backoff on network errors, 5xx and 429. Private, loopback and other non-public addresses are "
        "refused (422) unless ETM_WEBHOOK_ALLOW_PRIVATE or ETM_WEBHOOK_ALLOWED_HOSTS allows them.",
    )


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last.")


class Artifact(BaseModel):
    name: str
    bytes: int
    media_type: str
    url: str


class ArtifactList(BaseModel):
    items: list[Artifact]


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
