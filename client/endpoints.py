"""Every endpoint of the API, described once for both clients (``Client`` and ``AsyncClient``).

An endpoint is a generator function (the "sans-I/O" pattern): it *yields* what it needs done and gets the
outcome back, and it returns the typed answer. It never performs I/O itself, so one body serves the sync and
the async client, whose transports (``client.http``) carry the steps out:

- ``Request``: send this request (with the client's retries); the ``httpx.Response`` comes back, or the
  ``ApiError``/``ConnectionFailed`` is raised at the ``yield``.
- ``Sleep``: pause (``time.sleep`` or ``asyncio.sleep``).
- ``Notify``: call a progress callback (the async client awaits it when it is a coroutine function).

Endpoints built on others (``wait``, ``evaluate``, ``compare``, ``gate``, ``download_artifacts``) use
``yield from``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from client.errors import ApiError, JobFailed, WaitTimeout
from client.gate import GateResult, parse_requirements
from client.gate import evaluate as evaluate_requirements
from client.retry import parse_retry_after
from client.types import Artifact, Comparison, Dataset, Family, Job, Leaderboard, Model, Report
from client.uploads import BodyMaker, dataset_body, metadata_text, model_body

T = TypeVar("T")


@dataclass
class Request:
    """One API request. ``make`` builds the body's keyword arguments anew for every try (upload bodies are
    streams and cannot be replayed)."""

    method: str
    path: str
    make: BodyMaker | None = None
    params: dict[str, Any] | None = None  # None values are left out
    json: Any = None
    headers: dict[str, str] | None = None
    safe: bool = True  # may be retried after a connection broke mid-request
    upload: bool = False  # answered only once the service has validated the upload: the long timeout


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    callback: Callable[[Job], Any]
    job: Job


Step = Request | Sleep | Notify
Op = Generator[Step, Any, T]  # an endpoint: yields steps, returns its answer


def _get(path: str, **kwargs: Any) -> Op[httpx.Response]:
    return (yield Request("GET", path, **kwargs))


def _job(resp: httpx.Response) -> Job:
    return Job.from_json(
        resp.json(),
        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        replayed=resp.headers.get("Idempotent-Replayed") == "true",
    )


def _changed(prev: Job | None, job: Job) -> bool:
    if prev is None:
        return True
    a, b = prev.progress, job.progress
    return (prev.status, a.stage, a.done, a.fraction) != (job.status, b.stage, b.done, b.fraction)


def job_body(
    candidates: Mapping[str, Sequence[str]] | Sequence[Mapping[str, Any]],
    dataset: str,
    **options: Any,
) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body: candidates as ``{name: [model ids]}`` (or the API's list form), the
    dataset id and any ``EvaluationSpec`` field (``measures``, ``method``, ``seed``, ``split``,
    ``ood_dataset``, ``max_images``, ``bootstrap_resamples``, ``overlays``, ``callback_url``...).
    Options left ``None`` are left to the service's defaults."""
    if isinstance(candidates, Mapping):
        cands = [{"name": str(n), "models": list(m)} for n, m in candidates.items()]
    else:
        cands = [{"name": c["name"], "models": list(c["models"])} for c in candidates]
    body: dict[str, Any] = {"candidates": cands, "dataset": dataset}
    body.update({k: v for k, v in options.items() if v is not None})
    return body


# -- service ---------------------------------------------------------------------------------------


def health() -> Op[dict[str, Any]]:
    return (yield from _get("/healthz")).json()


def ready() -> Op[bool]:
    """True when Redis and at least one worker answer (``/readyz``)."""
    try:
        yield from _get("/readyz")
    except ApiError:
        return False
    return True


# -- models and datasets ---------------------------------------------------------------------------


def push_model(path: str | Path, metadata: Mapping[str, Any] | str | Path | None = None) -> Op[Model]:
    """Upload an ``.onnx`` or ``.pt2`` model (streamed). ``metadata``: a dict, JSON text or a JSON file
    (input_size, mean, std, class_names, positive_class, score_activation). The same bytes again give
    the existing record (``created`` False)."""
    text = metadata_text(metadata)
    resp = yield Request("POST", "/v1/models", make=model_body(Path(path), text), upload=True)
    return Model.from_json(resp.json(), created=resp.status_code == 201)


def push_dataset(path: str | Path) -> Op[Dataset]:
    """Upload a dataset: a folder (zipped while it is sent) or a ``.zip``/``.tar(.gz|.bz2|.xz)``."""
    resp = yield Request("POST", "/v1/datasets", make=dataset_body(Path(path)), upload=True)
    return Dataset.from_json(resp.json(), created=resp.status_code == 201)


def model(model_id: str) -> Op[Model]:
    return Model.from_json((yield from _get(f"/v1/models/{model_id}")).json())


def models() -> Op[list[Model]]:
    return [Model.from_json(m) for m in (yield from _get("/v1/models")).json()["items"]]


def dataset(dataset_id: str) -> Op[Dataset]:
    return Dataset.from_json((yield from _get(f"/v1/datasets/{dataset_id}")).json())


def datasets() -> Op[list[Dataset]]:
    return [Dataset.from_json(d) for d in (yield from _get("/v1/datasets")).json()["items"]]


def families() -> Op[list[Family]]:
    """Built-in model families (``builtin:<family>/run<k>`` ids in run order)."""
    return [Family(f["name"], list(f["models"])) for f in (yield from _get("/v1/families")).json()["items"]]


# -- jobs ------------------------------------------------------------------------------------------


def submit_job(
    candidates: Mapping[str, Sequence[str]] | Sequence[Mapping[str, Any]],
    dataset: str,
    *,
    idempotency_key: str | None = None,
    **options: Any,
) -> Op[Job]:
    """Submit a job (see ``job_body`` for the options). A cached result comes back ``succeeded``."""
    return (yield from submit_spec(job_body(candidates, dataset, **options), idempotency_key))


def submit_spec(body: Mapping[str, Any], idempotency_key: str | None = None) -> Op[Job]:
    """Submit a job body as the API takes it (an EvaluationSpec with ids, plus ``callback_url``). It always
    carries an ``Idempotency-Key`` (a fresh one unless given), so a retried submission makes one job."""
    key = idempotency_key or f"etm-client-{uuid.uuid4().hex}"
    return _job((yield Request("POST", "/v1/jobs", json=dict(body), headers={"Idempotency-Key": key})))


def job(job_id: str) -> Op[Job]:
    return _job((yield from _get(f"/v1/jobs/{job_id}")))


def jobs(status: str | None = None, limit: int = 20) -> Op[list[Job]]:
    data = (yield from _get("/v1/jobs", params={"status": status, "limit": limit})).json()
    return [Job.from_json(j) for j in data["items"]]


def cancel(job_id: str) -> Op[Job]:
    return _job((yield Request("POST", f"/v1/jobs/{job_id}/cancel", safe=False)))


def wait(
    job_id: str,
    *,
    timeout: float | None = None,
    poll: float = 2.0,
    on_progress: Callable[[Job], Any] | None = None,
    raise_on_failure: bool = True,
) -> Op[Job]:
    """Poll until the job ends. ``on_progress(job)`` is called whenever its status or progress moved (with
    ``AsyncClient`` it may also be a coroutine function).

    Args:
        timeout: Give up after this many seconds (``WaitTimeout``; the job keeps running). None: never.
        poll: Longest pause between polls (they start at 0.2 s and grow towards it).
        raise_on_failure: Raise ``JobFailed`` (with the job's problem) when it failed or was canceled.
    """
    started, pause, last = time.monotonic(), 0.2, None
    while True:
        current = yield from job(job_id)
        if on_progress and _changed(last, current):
            yield Notify(on_progress, current)
        last = current
        if current.ended:
            if raise_on_failure and not current.succeeded:
                raise JobFailed(current)
            return current
        if timeout is not None and time.monotonic() - started + pause > timeout:
            raise WaitTimeout(current, timeout)
        yield Sleep(pause)
        pause = min(poll, pause * 1.5)


def evaluate(
    candidates: Mapping[str, Sequence[str]] | Sequence[Mapping[str, Any]],
    dataset: str,
    *,
    on_progress: Callable[[Job], Any] | None = None,
    timeout: float | None = None,
    **options: Any,
) -> Op[tuple[Job, Report]]:
    """Submit, wait and fetch the report in one call."""
    submitted = yield from submit_job(candidates, dataset, **options)
    ended = yield from wait(submitted.id, on_progress=on_progress, timeout=timeout)
    return ended, (yield from report(ended.id))


# -- results ---------------------------------------------------------------------------------------


def report(job_id: str) -> Op[Report]:
    """The versioned report. A job that has not finished answers 409 (``ApiError``, ``slug``
    ``job-not-finished``): ``wait`` first."""
    return Report((yield from _get(f"/v1/jobs/{job_id}/report")).json())


def report_csv(job_id: str) -> Op[str]:
    return (yield from _get(f"/v1/jobs/{job_id}/report.csv")).text


def report_html(job_id: str) -> Op[str]:
    """The report as one self-contained HTML page (images inline; opens offline)."""
    return (yield from _get(f"/v1/jobs/{job_id}/report.html", headers={"Accept": "text/html"})).text


def compare(job_id: str) -> Op[Comparison]:
    """The report's ranking: per directed measure, ranks (with ties), paired differences, Pareto set."""
    return (yield from report(job_id)).comparison


def artifacts(job_id: str) -> Op[list[Artifact]]:
    items = (yield from _get(f"/v1/jobs/{job_id}/artifacts")).json()["items"]
    return [Artifact(a["name"], int(a["bytes"]), a["media_type"], a["url"]) for a in items]


def artifact(job_id: str, name: str) -> Op[bytes]:
    return (yield from _get(f"/v1/jobs/{job_id}/artifacts/{name}", headers={"Accept": "*/*"})).content


def download_artifacts(job_id: str, dest: str | Path, names: Sequence[str] | None = None) -> Op[list[Path]]:
    """Save the job's artifacts (all, or ``names``) under ``dest``; returns the paths written."""
    out_dir = Path(dest)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [a.name for a in (yield from artifacts(job_id)) if names is None or a.name in names]
    paths = []
    for name in wanted:
        p = out_dir / Path(name).name
        p.write_bytes((yield from artifact(job_id, name)))
        paths.append(p)
    return paths


def leaderboard(dataset_id: str, measure: str | None = None) -> Op[Leaderboard]:
    """Every candidate scored on ``dataset_id``, ranked within groups of jobs with the same configuration."""
    resp = yield from _get(f"/v1/leaderboards/{dataset_id}", params={"measure": measure})
    return Leaderboard.from_json(resp.json())


def gate(job_id: str, requirements: Sequence[str], candidates: Sequence[str] | None = None) -> Op[GateResult]:
    """Check requirements such as ``"stability.ssim>=0.6"`` against the job's report (``client.gate``)."""
    raw = (yield from report(job_id)).raw
    return evaluate_requirements(raw, parse_requirements(requirements), candidates)
