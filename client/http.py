"""The typed Python client of the Explain-to-Me REST API, on httpx: ``Client`` (sync) and ``AsyncClient``.

```python
from client import Client

with Client("http://127.0.0.1:8000") as etm:
    a = [etm.push_model(p).id for p in ("a0.onnx", "a1.onnx")]
    b = [etm.push_model(p).id for p in ("b0.onnx", "b1.onnx")]
    data = etm.push_dataset("data/")                     # a folder is zipped on the fly, or a .zip/.tar
    job = etm.submit_job({"a": a, "b": b}, data.id, measures=["entropy", "stability"])
    job = etm.wait(job.id, on_progress=lambda j: print(j.progress.fraction))
    print(etm.compare(job.id).measures["stability.ssim"].best)
```

Behaviour worth knowing:

- Errors: every error answer raises ``ApiError`` carrying the service's problem+json (``status``, ``title``,
  ``detail``, ``type``, ``problem``). An unreachable service raises ``ConnectionFailed``.
- Retries: 429 and 503 answers are retried, waiting what ``Retry-After`` says (capped by
  ``RetryPolicy.max_retry_after``), else with exponential backoff; at most ``RetryPolicy.attempts`` tries
  and ``RetryPolicy.budget`` seconds in all. Connection failures are retried the same way. Other errors
  are not retried. Retrying is safe: uploads are content-addressed (the same bytes give the same record)
  and ``submit_job`` always sends an ``Idempotency-Key`` (a fresh one unless you pass yours).
- Uploads stream: a model or an archive is read from disk in chunks; a dataset *folder* is zipped while
  it is sent (nothing is held in memory whole, no temporary archive is written).
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import os
import random
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from client.errors import ApiError, ConnectionFailed, JobFailed, WaitTimeout
from client.types import Artifact, Comparison, Dataset, Family, Job, Leaderboard, Model, Report

DEFAULT_URL = "http://127.0.0.1:8000"
ENV_URL = "ETM_API_URL"
ENV_KEY = "ETM_API_KEY"
RETRY_STATUSES = frozenset({429, 503})
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_STORED = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip", ".gz"}  # already compressed: store, do not deflate
_CHUNK = 1 << 20

try:
    from importlib.metadata import version as _version

    __version__ = _version("explain-to-me")
except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. run from a checkout)
    __version__ = "0"


# -- retries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries 429/503 answers and connection failures.

    Attributes:
        attempts: Tries in all (1 = never retry).
        max_retry_after: The longest single wait, in seconds, whatever ``Retry-After`` asks for.
        backoff: First wait when the service gave no ``Retry-After`` (doubles each try, with jitter).
        max_backoff: Cap of that exponential wait.
        budget: Seconds one call may spend waiting between tries, in all.
    """

    attempts: int = 5
    max_retry_after: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 8.0
    budget: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each wait: what failed and how long the client waits."""

    method: str
    url: str
    attempt: int  # the try that failed, from 1
    status: int | None  # None for a connection failure
    reason: str
    wait: float


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(resp: httpx.Response) -> ApiError:
    """The ``ApiError`` for an error answer: its problem+json, or one made from what came back."""
    problem: dict[str, Any] | None = None
    try:
        body = resp.json()
        if isinstance(body, dict) and ("title" in body or "detail" in body):
            problem = body
    except ValueError:
        body = None
    if problem is None:
        text = resp.text.strip()
        problem = {
            "type": "about:blank",
            "title": resp.reason_phrase or "Error",
            "detail": (text[:500] if text else f"HTTP {resp.status_code} from {resp.request.url}"),
        }
    problem.setdefault("status", resp.status_code)
    problem.setdefault("instance", resp.request.url.path)
    return ApiError(problem, parse_retry_after(resp.headers.get("Retry-After")))


# -- uploads ---------------------------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ARCHIVE_SUFFIXES)


class _Sink(io.RawIOBase):
    """An unseekable buffer zipfile writes into; ``take`` drains it. Unseekable on purpose: zipfile then
    writes data descriptors instead of seeking back, so the archive can be streamed."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.buf += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def dataset_files(folder: Path) -> list[tuple[Path, str]]:
    """The files a folder upload sends: regular files in sorted order, hidden names (``.git``,
    ``.DS_Store``) left out; ``(path, name in the archive)``."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append((p, rel.as_posix()))
    return out


def zip_stream(folder: Path, chunk: int = _CHUNK) -> Iterator[bytes]:
    """A zip archive of ``folder``, produced piece by piece (at most about ``chunk`` bytes held)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for path, name in dataset_files(folder):
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                while block := src.read(chunk):
                    dst.write(block)
                    if len(sink.buf) >= chunk:
                        yield sink.take()
            if sink.buf:
                yield sink.take()
    if sink.buf:  # the central directory, written on close
        yield sink.take()


def _multipart_stream(boundary: str, filename: str, ctype: str, body: Iterator[bytes]) -> Iterator[bytes]:
    safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    yield from body
    yield f"\r\n--{boundary}--\r\n".encode()


async def _aiter(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A sync byte iterator for the async client; each piece is made in a thread (it reads files)."""
    done = object()
    while True:
        piece = await asyncio.to_thread(next, it, done)
        if piece is done:
            return
        yield piece  # type: ignore[misc]


def _metadata_text(metadata: Mapping[str, Any] | str | Path | None) -> str | None:
    if metadata is None:
        return None
    if isinstance(metadata, Path):
        return metadata.read_text()
    if isinstance(metadata, str):
        json.loads(metadata)  # fail here, with the JSON error, rather than as a 422 later
        return metadata
    return json.dumps(dict(metadata))


@dataclass
class _Call:
    """One API call, described once for both clients: ``make`` builds the request's keyword arguments
    anew for every try (upload bodies are streams and cannot be replayed)."""

    method: str
    path: str
    make: Callable[[ExitStack, bool], dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] | None = None
    safe: bool = True  # may be retried after a connection broke mid-request
    timeout: Any = None


def _model_call(path: Path, metadata: str | None, timeout: Any) -> _Call:
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")

    def make(stack: ExitStack, _async: bool) -> dict[str, Any]:
        f = stack.enter_context(path.open("rb"))
        kw: dict[str, Any] = {"files": {"file": (path.name, f, "application/octet-stream")}}
        if metadata is not None:
            kw["data"] = {"metadata": metadata}
        return kw

    return _Call("POST", "/v1/models", make=make, timeout=timeout)


def _dataset_call(path: Path, timeout: Any) -> _Call:
    if path.is_dir():
        if not dataset_files(path):
            raise FileNotFoundError(f"dataset folder {path} has no files")
        filename = f"{path.resolve().name or 'dataset'}.zip"

        def make(stack: ExitStack, is_async: bool) -> dict[str, Any]:
            boundary = uuid.uuid4().hex
            body = _multipart_stream(boundary, filename, "application/zip", zip_stream(path))
            return {
                "content": _aiter(body) if is_async else body,
                "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            }

        return _Call("POST", "/v1/datasets", make=make, timeout=timeout)
    if is_archive(path):

        def make_file(stack: ExitStack, _async: bool) -> dict[str, Any]:
            f = stack.enter_context(path.open("rb"))
            return {"files": {"file": (path.name, f, "application/octet-stream")}}

        return _Call("POST", "/v1/datasets", make=make_file, timeout=timeout)
    if path.is_file():
        raise ValueError(f"{path} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    raise FileNotFoundError(f"dataset {path} does not exist")


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


def _changed(prev: Job | None, job: Job) -> bool:
    if prev is None:
        return True
    a, b = prev.progress, job.progress
    return (prev.status, a.stage, a.done, a.fraction) != (job.status, b.stage, b.done, b.fraction)


# -- the clients ----------------------------------------------------------------------------------


class _Base:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        upload_timeout: float = 900.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(ENV_KEY)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.timeout = timeout
        self.upload_timeout = httpx.Timeout(upload_timeout, connect=10.0)
        self.headers = {"User-Agent": f"etm-client/{__version__}", "Accept": "application/json"}
        if key:
            # The service has no authentication of its own; a gateway in front of it checks this.
            self.headers["Authorization"] = f"Bearer {key}"
        self.headers.update(headers or {})

    def _wait_for(self, call: _Call, attempt: int, waited: float, status: int | None, ra: float | None,
                  reason: str) -> float | None:
        """Seconds to wait before the next try, or None when the policy says stop (``waited``: seconds
        already waited between the earlier tries of this call)."""
        if attempt + 1 >= self.retry.attempts:
            return None
        wait = self.retry.delay(attempt, ra)
        if waited + wait > self.retry.budget:
            return None
        if self.on_retry:
            self.on_retry(RetryEvent(call.method, self.base_url + call.path, attempt + 1, status, reason, wait))
        return wait

    @staticmethod
    def _retryable_transport(call: _Call, exc: httpx.TransportError) -> bool:
        # Nothing was sent when the connection could not be opened; otherwise only safe calls retry.
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) or call.safe

    def _retry_wait(
        self, call: _Call, attempt: int, waited: float, failure: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before retrying a failed call (shared by the sync and async clients); raises
        the call's error when it is not worth retrying."""
        if isinstance(failure, httpx.TransportError):
            wait = (self._wait_for(call, attempt, waited, None, None, repr(failure))
                    if self._retryable_transport(call, failure) else None)
            if wait is None:
                raise ConnectionFailed(
                    f"cannot reach {self.base_url} ({type(failure).__name__}: {failure})"
                ) from failure
            return wait
        err = error_from_response(failure)
        wait = None
        if failure.status_code in RETRY_STATUSES:
            wait = self._wait_for(call, attempt, waited, failure.status_code, err.retry_after, err.title)
        if wait is None:
            raise err
        return wait

    def _request_kwargs(self, call: _Call, stack: ExitStack, is_async: bool) -> dict[str, Any]:
        kw: dict[str, Any] = call.make(stack, is_async) if call.make else {}
        headers = {**(call.headers or {}), **kw.pop("headers", {})}
        if headers:
            kw["headers"] = headers
        if call.params:
            kw["params"] = {k: v for k, v in call.params.items() if v is not None}
        if call.json is not None:
            kw["json"] = call.json
        if call.timeout is not None:
            kw["timeout"] = call.timeout
        return kw

    @staticmethod
    def _job(resp: httpx.Response) -> Job:
        return Job.from_json(
            resp.json(),
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            replayed=resp.headers.get("Idempotent-Replayed") == "true",
        )

    # -- call descriptions shared by both clients ------------------------------------------------
    def _submit_call(self, body: Mapping[str, Any], idempotency_key: str | None) -> _Call:
        key = idempotency_key or f"etm-client-{uuid.uuid4().hex}"
        return _Call("POST", "/v1/jobs", json=dict(body), headers={"Idempotency-Key": key})


class Client(_Base):
    """Synchronous client. Use as a context manager, or call ``close()``.

    Args:
        base_url: The service, e.g. ``http://127.0.0.1:8000``; default ``$ETM_API_URL``, else that.
        api_key: Sent as ``Authorization: Bearer <key>`` (for a gateway); default ``$ETM_API_KEY``.
        timeout: Seconds per request (httpx timeout), uploads excepted.
        upload_timeout: Seconds an upload may take to be answered (the service validates before it answers).
        retry: The retry policy for 429/503 and connection failures.
        on_retry: Called before each retry wait (e.g. to log "service busy, retrying in 2 s").
        transport: An httpx transport (tests, proxies).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 **kwargs: Any) -> None:
        super().__init__(base_url, api_key, **kwargs)
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, call: _Call) -> httpx.Response:
        waited = 0.0
        attempt = 0
        while True:
            with ExitStack() as stack:
                try:
                    resp = self._http.request(call.method, call.path, **self._request_kwargs(call, stack, False))
                except httpx.TransportError as exc:
                    wait = self._retry_wait(call, attempt, waited, exc)
                else:
                    if not resp.is_error:
                        return resp
                    wait = self._retry_wait(call, attempt, waited, resp)
            self._sleep(wait)
            waited += wait
            attempt += 1

    # -- service ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/healthz")).json()

    def ready(self) -> bool:
        """True when Redis and at least one worker answer (``/readyz``)."""
        try:
            self._send(_Call("GET", "/readyz"))
            return True
        except ApiError:
            return False

    # -- models and datasets ---------------------------------------------------------------------
    def push_model(self, path: str | Path, metadata: Mapping[str, Any] | str | Path | None = None) -> Model:
        """Upload an ``.onnx`` or ``.pt2`` model (streamed). ``metadata``: a dict, JSON text or a JSON file
        (input_size, mean, std, class_names, positive_class, score_activation). The same bytes again give
        the existing record (``created`` False)."""
        resp = self._send(_model_call(Path(path), _metadata_text(metadata), self.upload_timeout))
        return Model.from_json(resp.json(), created=resp.status_code == 201)

    def push_dataset(self, path: str | Path) -> Dataset:
        """Upload a dataset: a folder (zipped while it is sent) or a ``.zip``/``.tar(.gz|.bz2|.xz)``."""
        resp = self._send(_dataset_call(Path(path), self.upload_timeout))
        return Dataset.from_json(resp.json(), created=resp.status_code == 201)

    def model(self, model_id: str) -> Model:
        return Model.from_json(self._send(_Call("GET", f"/v1/models/{model_id}")).json())

    def models(self) -> list[Model]:
        return [Model.from_json(m) for m in self._send(_Call("GET", "/v1/models")).json()["items"]]

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._send(_Call("GET", f"/v1/datasets/{dataset_id}")).json())

    def datasets(self) -> list[Dataset]:
        return [Dataset.from_json(d) for d in self._send(_Call("GET", "/v1/datasets")).json()["items"]]

    def families(self) -> list[Family]:
        """Built-in model families (``builtin:<family>/run<k>`` ids in run order)."""
        return [Family(f["name"], list(f["models"])) for f in self._send(_Call("GET", "/v1/families")).json()["items"]]

    # -- jobs ------------------------------------------------------------------------------------
    def submit_job(
        self,
        candidates: Mapping[str, Sequence[str]] | Sequence[Mapping[str, Any]],
        dataset: str,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Submit a job (see ``job_body`` for the options). A cached result comes back ``succeeded``."""
        return self.submit_spec(job_body(candidates, dataset, **options), idempotency_key)

    def submit_spec(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """Submit a job body as the API takes it (an EvaluationSpec with ids, plus ``callback_url``)."""
        return self._job(self._send(self._submit_call(body, idempotency_key)))

    def job(self, job_id: str) -> Job:
        return self._job(self._send(_Call("GET", f"/v1/jobs/{job_id}")))

    def jobs(self, status: str | None = None, limit: int = 20) -> list[Job]:
        data = self._send(_Call("GET", "/v1/jobs", params={"status": status, "limit": limit})).json()
        return [Job.from_json(j) for j in data["items"]]

    def cancel(self, job_id: str) -> Job:
        return self._job(self._send(_Call("POST", f"/v1/jobs/{job_id}/cancel", safe=False)))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 2.0,
        on_progress: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job ends. ``on_progress(job)`` is called whenever its status or progress moved.

        Args:
            timeout: Give up after this many seconds (``WaitTimeout``; the job keeps running). None: never.
            poll: Longest pause between polls (they start at 0.2 s and grow towards it).
            raise_on_failure: Raise ``JobFailed`` (with the job's problem) when it failed or was canceled.
        """
        started, pause, last = time.monotonic(), 0.2, None
        while True:
            job = self.job(job_id)
            if on_progress and _changed(last, job):
                on_progress(job)
            last = job
            if job.ended:
                if raise_on_failure and not job.succeeded:
                    raise JobFailed(job)
                return job
            if timeout is not None and time.monotonic() - started + pause > timeout:
                raise WaitTimeout(job, timeout)
            self._sleep(pause)
            pause = min(poll, pause * 1.5)

    def evaluate(self, candidates: Any, dataset: str, *, on_progress: Callable[[Job], None] | None = None,
                 timeout: float | None = None, **options: Any) -> tuple[Job, Report]:
        """Submit, wait and fetch the report in one call."""
        job = self.submit_job(candidates, dataset, **options)
        job = self.wait(job.id, on_progress=on_progress, timeout=timeout)
        return job, self.report(job.id)

    # -- results ---------------------------------------------------------------------------------
    def report(self, job_id: str) -> Report:
        """The versioned report. A job that has not finished answers 409 (``ApiError``, ``slug``
        ``job-not-finished``): ``wait`` first."""
        return Report(self._send(_Call("GET", f"/v1/jobs/{job_id}/report")).json())

    def report_csv(self, job_id: str) -> str:
        return self._send(_Call("GET", f"/v1/jobs/{job_id}/report.csv")).text

    def report_html(self, job_id: str) -> str:
        """The report as one self-contained HTML page (images inline; opens offline)."""
        return self._send(_Call("GET", f"/v1/jobs/{job_id}/report.html", headers={"Accept": "text/html"})).text

    def compare(self, job_id: str) -> Comparison:
        """The report's ranking: per directed measure, ranks (with ties), paired differences, Pareto set."""
        return self.report(job_id).comparison

    def artifacts(self, job_id: str) -> list[Artifact]:
        items = self._send(_Call("GET", f"/v1/jobs/{job_id}/artifacts")).json()["items"]
        return [Artifact(a["name"], int(a["bytes"]), a["media_type"], a["url"]) for a in items]

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._send(_Call("GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers={"Accept": "*/*"})).content

    def download_artifacts(self, job_id: str, dest: str | Path, names: Sequence[str] | None = None) -> list[Path]:
        """Save the job's artifacts (all, or ``names``) under ``dest``; returns the paths written."""
        out_dir = Path(dest)
        out_dir.mkdir(parents=True, exist_ok=True)
        wanted = [a.name for a in self.artifacts(job_id) if names is None or a.name in names]
        paths = []
        for name in wanted:
            p = out_dir / Path(name).name
            p.write_bytes(self.artifact(job_id, name))
            paths.append(p)
        return paths

    def leaderboard(self, dataset_id: str, measure: str | None = None) -> Leaderboard:
        """Every candidate scored on ``dataset_id``, ranked within groups of jobs with the same configuration."""
        resp = self._send(_Call("GET", f"/v1/leaderboards/{dataset_id}", params={"measure": measure}))
        return Leaderboard.from_json(resp.json())

    def gate(self, job_id: str, requirements: Sequence[str], candidates: Sequence[str] | None = None) -> Any:
        """Check requirements such as ``"stability.ssim>=0.6"`` against the job's report (``client.gate``)."""
        from client.gate import evaluate, parse_requirements

        return evaluate(self.report(job_id).raw, parse_requirements(requirements), candidates)


class AsyncClient(_Base):
    """Asynchronous client: the same methods as ``Client``, as coroutines. ``async with AsyncClient() as c``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        super().__init__(base_url, api_key, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        waited = 0.0
        attempt = 0
        while True:
            with ExitStack() as stack:
                try:
                    resp = await self._http.request(call.method, call.path,
                                                    **self._request_kwargs(call, stack, True))
                except httpx.TransportError as exc:
                    wait = self._retry_wait(call, attempt, waited, exc)
                else:
                    if not resp.is_error:
                        return resp
                    wait = self._retry_wait(call, attempt, waited, resp)
            await asyncio.sleep(wait)
            waited += wait
            attempt += 1

    async def health(self) -> dict[str, Any]:
        return (await self._send(_Call("GET", "/healthz"))).json()

    async def push_model(self, path: str | Path, metadata: Mapping[str, Any] | str | Path | None = None) -> Model:
        resp = await self._send(_model_call(Path(path), _metadata_text(metadata), self.upload_timeout))
        return Model.from_json(resp.json(), created=resp.status_code == 201)

    async def push_dataset(self, path: str | Path) -> Dataset:
        resp = await self._send(_dataset_call(Path(path), self.upload_timeout))
        return Dataset.from_json(resp.json(), created=resp.status_code == 201)

    async def model(self, model_id: str) -> Model:
        return Model.from_json((await self._send(_Call("GET", f"/v1/models/{model_id}"))).json())

    async def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_json((await self._send(_Call("GET", f"/v1/datasets/{dataset_id}"))).json())

    async def models(self) -> list[Model]:
        return [Model.from_json(m) for m in (await self._send(_Call("GET", "/v1/models"))).json()["items"]]

    async def datasets(self) -> list[Dataset]:
        return [Dataset.from_json(d) for d in (await self._send(_Call("GET", "/v1/datasets"))).json()["items"]]

    async def ready(self) -> bool:
        try:
            await self._send(_Call("GET", "/readyz"))
            return True
        except ApiError:
            return False

    async def families(self) -> list[Family]:
        items = (await self._send(_Call("GET", "/v1/families"))).json()["items"]
        return [Family(f["name"], list(f["models"])) for f in items]

    async def submit_job(self, candidates: Any, dataset: str, *, idempotency_key: str | None = None,
                         **options: Any) -> Job:
        return await self.submit_spec(job_body(candidates, dataset, **options), idempotency_key)

    async def submit_spec(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        return self._job(await self._send(self._submit_call(body, idempotency_key)))

    async def job(self, job_id: str) -> Job:
        return self._job(await self._send(_Call("GET", f"/v1/jobs/{job_id}")))

    async def jobs(self, status: str | None = None, limit: int = 20) -> list[Job]:
        data = (await self._send(_Call("GET", "/v1/jobs", params={"status": status, "limit": limit}))).json()
        return [Job.from_json(j) for j in data["items"]]

    async def cancel(self, job_id: str) -> Job:
        return self._job(await self._send(_Call("POST", f"/v1/jobs/{job_id}/cancel", safe=False)))

    async def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 2.0,
                   on_progress: Callable[[Job], Any] | None = None, raise_on_failure: bool = True) -> Job:
        """As ``Client.wait``; ``on_progress`` may be a plain function or a coroutine function."""
        started, pause, last = time.monotonic(), 0.2, None
        while True:
            job = await self.job(job_id)
            if on_progress and _changed(last, job):
                res = on_progress(job)
                if asyncio.iscoroutine(res):
                    await res
            last = job
            if job.ended:
                if raise_on_failure and not job.succeeded:
                    raise JobFailed(job)
                return job
            if timeout is not None and time.monotonic() - started + pause > timeout:
                raise WaitTimeout(job, timeout)
            await asyncio.sleep(pause)
            pause = min(poll, pause * 1.5)

    async def evaluate(self, candidates: Any, dataset: str, *, on_progress: Callable[[Job], Any] | None = None,
                       timeout: float | None = None, **options: Any) -> tuple[Job, Report]:
        job = await self.submit_job(candidates, dataset, **options)
        job = await self.wait(job.id, on_progress=on_progress, timeout=timeout)
        return job, await self.report(job.id)

    async def report(self, job_id: str) -> Report:
        return Report((await self._send(_Call("GET", f"/v1/jobs/{job_id}/report"))).json())

    async def report_csv(self, job_id: str) -> str:
        return (await self._send(_Call("GET", f"/v1/jobs/{job_id}/report.csv"))).text

    async def report_html(self, job_id: str) -> str:
        return (await self._send(_Call("GET", f"/v1/jobs/{job_id}/report.html", headers={"Accept": "text/html"}))).text

    async def compare(self, job_id: str) -> Comparison:
        return (await self.report(job_id)).comparison

    async def artifacts(self, job_id: str) -> list[Artifact]:
        items = (await self._send(_Call("GET", f"/v1/jobs/{job_id}/artifacts"))).json()["items"]
        return [Artifact(a["name"], int(a["bytes"]), a["media_type"], a["url"]) for a in items]

    async def artifact(self, job_id: str, name: str) -> bytes:
        resp = await self._send(_Call("GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers={"Accept": "*/*"}))
        return resp.content

    async def download_artifacts(self, job_id: str, dest: str | Path, names: Sequence[str] | None = None) -> list[Path]:
        out_dir = Path(dest)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for a in await self.artifacts(job_id):
            if names is None or a.name in names:
                p = out_dir / Path(a.name).name
                p.write_bytes(await self.artifact(job_id, a.name))
                paths.append(p)
        return paths

    async def leaderboard(self, dataset_id: str, measure: str | None = None) -> Leaderboard:
        resp = await self._send(_Call("GET", f"/v1/leaderboards/{dataset_id}", params={"measure": measure}))
        return Leaderboard.from_json(resp.json())

    async def gate(self, job_id: str, requirements: Sequence[str], candidates: Sequence[str] | None = None) -> Any:
        from client.gate import evaluate, parse_requirements

        return evaluate((await self.report(job_id)).raw, parse_requirements(requirements), candidates)
