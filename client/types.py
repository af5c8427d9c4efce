"""Typed views of what the service answers. Each keeps the JSON it was made from in ``raw``, so that
fields added by later (minor) API versions stay reachable without a client upgrade."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
CI = tuple[float | None, float | None] | None


def _ci(v: Any) -> CI:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return (v[0], v[1])
    return None


@dataclass(frozen=True)
class Model:
    """A registered model (``POST /v1/models``, ``GET /v1/models/{id}``)."""

    id: str
    sha256: str
    format: str
    filename: str
    bytes: int
    metadata: dict[str, Any]
    capabilities: dict[str, Any]
    builtin: bool = False
    family: str | None = None
    run: int | None = None
    created: bool = False  # True when this upload registered it (201), False when it existed (200)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], created: bool = False) -> Model:
        return cls(
            id=d["id"],
            sha256=d["sha256"],
            format=d.get("format", ""),
            filename=d.get("filename", ""),
            bytes=int(d.get("bytes", 0)),
            metadata=dict(d.get("metadata") or {}),
            capabilities=dict(d.get("capabilities") or {}),
            builtin=bool(d.get("builtin", False)),
            family=d.get("family"),
            run=d.get("run"),
            created=created,
            raw=dict(d),
        )

    def supports(self, method: str) -> bool:
        """Whether the salience ``method`` can run on this model (see ``capabilities[method].reason``)."""
        return bool((self.capabilities.get(method) or {}).get("available", False))


@dataclass(frozen=True)
class Dataset:
    """A registered dataset (``POST /v1/datasets``, ``GET /v1/datasets/{id}``)."""

    id: str
    name: str
    sha256: str
    n_images: int
    classes: list[str]
    counts: dict[str, int]
    has_splits: bool
    default_split: str | None
    builtin: bool = False
    n_skipped: int = 0
    created: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], created: bool = False) -> Dataset:
        return cls(
            id=d["id"],
            name=d.get("name", ""),
            sha256=d.get("sha256", ""),
            n_images=int(d.get("n_images", 0)),
            classes=list(d.get("classes") or []),
            counts=dict(d.get("counts") or {}),
            has_splits=bool(d.get("has_splits", False)),
            default_split=d.get("default_split"),
            builtin=bool(d.get("builtin", False)),
            n_skipped=int(d.get("n_skipped", 0)),
            created=created,
            raw=dict(d),
        )


@dataclass(frozen=True)
class Family:
    """A built-in model family: its model ids in run order (usable as a candidate as is)."""

    name: str
    models: list[str]


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int
    fraction: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Progress:
        d = d or {}
        return cls(
            stage=str(d.get("stage", "queued")),
            done=int(d.get("done", 0)),
            total=int(d.get("total", 0)),
            fraction=float(d.get("fraction", 0.0)),
        )


@dataclass(frozen=True)
class Job:
    """A job and where it stands (``GET /v1/jobs/{id}``)."""

    id: str
    status: JobStatus
    progress: Progress
    cache_hit: bool
    error: dict[str, Any] | None
    spec: dict[str, Any] | None
    n_images: int | None
    created_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    links: dict[str, Any]
    retry_after: float | None = None  # the service's polling hint, when it sent one
    replayed: bool = False  # True when an Idempotency-Key replay returned an existing job
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], retry_after: float | None = None, replayed: bool = False) -> Job:
        return cls(
            id=d["id"],
            status=d["status"],
            progress=Progress.from_json(d.get("progress")),
            cache_hit=bool(d.get("cache_hit", False)),
            error=d.get("error"),
            spec=d.get("spec"),
            n_images=d.get("n_images"),
            created_at=d.get("created_at"),
            finished_at=d.get("finished_at"),
            duration_seconds=d.get("duration_seconds"),
            links=dict(d.get("links") or {}),
            retry_after=retry_after,
            replayed=replayed,
            raw=dict(d),
        )

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class Artifact:
    name: str
    bytes: int
    media_type: str
    url: str


@dataclass(frozen=True)
class RankEntry:
    """One candidate's place on one measure: ``rank`` = 1 + the number of candidates significantly
    better (paired bootstrap); equal ranks are statistical ties."""

    candidate: str
    rank: int
    value: float | None
    ci: CI
    tied_with: list[str]
    # False when the candidate failed the sanity check and this measure is salience-based (see SanityVerdict).
    trusted: bool = True


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` on the same images, with its 95% bootstrap CI; ``better`` is None when tied."""

    a: str
    b: str
    mean_diff: float | None
    ci: CI
    better: str | None


@dataclass(frozen=True)
class MeasureRanking:
    name: str
    direction: Literal["higher", "lower"]
    ranking: list[RankEntry]
    paired_differences: list[PairedDifference]

    @property
    def best(self) -> list[str]:
        """The candidates ranked first (more than one when tied), but those marked not trustworthy."""
        return [e.candidate for e in self.ranking if e.rank == 1 and e.trusted]

    def difference(self, a: str, b: str) -> PairedDifference | None:
        """``a - b`` (either order is stored; this flips it when needed)."""
        for d in self.paired_differences:
            if (d.a, d.b) == (a, b):
                return d
            if (d.a, d.b) == (b, a):
                lo, hi = d.ci if d.ci else (None, None)
                ci: CI = (-hi if hi is not None else None, -lo if lo is not None else None) if d.ci else None
                return PairedDifference(a, b, -d.mean_diff if d.mean_diff is not None else None, ci, d.better)
        return None


@dataclass(frozen=True)
class SanityVerdict:
    """``comparison.sanity`` of a job that ran the randomisation sanity checks (``sanity.*``): the candidates whose
    maps failed (``untrusted``) under ``rule``, those without a verdict, and the salience-based measures on which
    the failed candidates' ranking entries are marked ``trusted: false`` and hold no first place."""

    untrusted: list[str]
    unchecked: list[str]
    rule: str
    measures_affected: list[str]
    note: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SanityVerdict:
        return cls(list(d.get("untrusted") or []), list(d.get("unchecked") or []), str(d.get("rule", "")),
                   list(d.get("measures_affected") or []), str(d.get("note", "")))


@dataclass(frozen=True)
class Comparison:
    """The report's ``comparison``: per directed measure, the ranking and paired differences; ``sanity`` when the
    job ran the sanity checks."""

    candidates: list[str]
    measures: dict[str, MeasureRanking]
    pareto_set: list[str]
    method: str = ""
    sanity: SanityVerdict | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Comparison:
        measures = {}
        for name, m in (d.get("measures") or {}).items():
            measures[name] = MeasureRanking(
                name=name,
                direction=m["direction"],
                ranking=[
                    RankEntry(e["candidate"], int(e["rank"]), e.get("value"), _ci(e.get("ci")), list(e["tied_with"]),
                              bool(e.get("trusted", True)))
                    for e in m.get("ranking", [])
                ],
                paired_differences=[
                    PairedDifference(p["a"], p["b"], p.get("mean_diff"), _ci(p.get("ci")), p.get("better"))
                    for p in m.get("paired_differences", [])
                ],
            )
        return cls(
            candidates=list(d.get("candidates") or []),
            measures=measures,
            pareto_set=list(d.get("pareto_set") or []),
            method=str(d.get("method", "")),
            sanity=SanityVerdict.from_json(d["sanity"]) if isinstance(d.get("sanity"), Mapping) else None,
        )

    def rank_of(self, candidate: str, measure: str) -> int | None:
        m = self.measures.get(measure)
        if m is None:
            return None
        return next((e.rank for e in m.ranking if e.candidate == candidate), None)

    def wins(self) -> dict[str, int]:
        """How many measures rank each candidate first (ties count for every tied candidate)."""
        out = dict.fromkeys(self.candidates, 0)
        for m in self.measures.values():
            for c in m.best:
                out[c] = out.get(c, 0) + 1
        return out


@dataclass(frozen=True)
class Report:
    """The versioned report (``GET /v1/jobs/{id}/report``; JSON Schema in openapi/report.schema.json)."""

    raw: dict[str, Any] = field(repr=False)

    @property
    def schema_version(self) -> str:
        return str(self.raw.get("schema_version", ""))

    @property
    def candidates(self) -> list[str]:
        return [c["name"] for c in self.raw.get("candidates", [])]

    @property
    def comparison(self) -> Comparison:
        return Comparison.from_json(self.raw.get("comparison") or {})

    def measure(self, candidate: str, name: str) -> dict[str, Any] | None:
        """The candidate's measure object (``value``, ``ci``, ``n``, ``direction``, ``details``...)."""
        for c in self.raw.get("candidates", []):
            if c["name"] == candidate:
                return (c.get("measures") or {}).get(name)
        return None

    def sanity(self, candidate: str) -> dict[str, Any] | None:
        """The candidate's sanity verdict (``passed``, ``trusted``, ``rule``, ``threshold``, ``upper``), or None when
        the job did not run the sanity checks."""
        for c in self.raw.get("candidates", []):
            if c["name"] == candidate:
                return c.get("sanity")
        return None

    def value(self, candidate: str, name: str) -> float | None:
        m = self.measure(candidate, name)
        return None if m is None else m.get("value")

    def measure_names(self) -> list[str]:
        names: list[str] = []
        for c in self.raw.get("candidates", []):
            for n in c.get("measures") or {}:
                if n not in names:
                    names.append(n)
        return names


@dataclass(frozen=True)
class Leaderboard:
    """``GET /v1/leaderboards/{dataset_id}``: candidates from every finished job on a dataset, one board per
    configuration."""

    dataset: str
    boards: list[dict[str, Any]]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Leaderboard:
        return cls(dataset=d["dataset"], boards=list(d.get("boards") or []), raw=dict(d))
