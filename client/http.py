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

The endpoints are written once, in ``client.endpoints``; this module is the two transports that carry
their steps out, and the retry loop they share (itself written once, as steps).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from client import endpoints
from client.endpoints import Notify, Op, Request, Sleep
from client.errors import ApiError, ConnectionFailed
from client.retry import RETRY_STATUSES, RetryEvent, RetryPolicy, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8000"
ENV_URL = "ETM_API_URL"
ENV_KEY = "ETM_API_KEY"

P = ParamSpec("P")
T = TypeVar("T")

try:
    from importlib.metadata import version as _version

    __version__ = _version("explain-to-me")
except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. run from a checkout)
    __version__ = "0"


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


@dataclass(frozen=True)
class _Try:
    """One try of a request, for a transport: it answers the ``httpx.Response`` or the ``TransportError``."""

    request: Request


_Primitive = _Try | Sleep | Notify


class _Base:
    """What both clients share: configuration, the retry loop, and turning an endpoint's steps into the few
    primitives (``_Try``, ``Sleep``, ``Notify``) a transport carries out."""

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

    def _wait_for(self, req: Request, attempt: int, waited: float, status: int | None, ra: float | None,
                  reason: str) -> float | None:
        """Seconds to wait before the next try, or None when the policy says stop (``waited``: seconds
        already waited between the earlier tries of this call)."""
        if attempt + 1 >= self.retry.attempts:
            return None
        wait = self.retry.delay(attempt, ra)
        if waited + wait > self.retry.budget:
            return None
        if self.on_retry:
            self.on_retry(RetryEvent(req.method, self.base_url + req.path, attempt + 1, status, reason, wait))
        return wait

    @staticmethod
    def _retryable_transport(req: Request, exc: httpx.TransportError) -> bool:
        # Nothing was sent when the connection could not be opened; otherwise only safe calls retry.
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) or req.safe

    def _retry_wait(
        self, req: Request, attempt: int, waited: float, failure: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before retrying a failed request; raises its error when it is not worth retrying."""
        if isinstance(failure, httpx.TransportError):
            wait = (self._wait_for(req, attempt, waited, None, None, repr(failure))
                    if self._retryable_transport(req, failure) else None)
            if wait is None:
                raise ConnectionFailed(
                    f"cannot reach {self.base_url} ({type(failure).__name__}: {failure})"
                ) from failure
            return wait
        err = error_from_response(failure)
        wait = None
        if failure.status_code in RETRY_STATUSES:
            wait = self._wait_for(req, attempt, waited, failure.status_code, err.retry_after, err.title)
        if wait is None:
            raise err
        return wait

    def _exchange(self, req: Request) -> Generator[_Primitive, Any, httpx.Response]:
        """A request with the policy's retries: the successful answer, else its ``ApiError`` or
        ``ConnectionFailed``."""
        waited, attempt = 0.0, 0
        while True:
            outcome = yield _Try(req)
            if isinstance(outcome, httpx.Response) and not outcome.is_error:
                return outcome
            wait = self._retry_wait(req, attempt, waited, outcome)
            yield Sleep(wait)
            waited += wait
            attempt += 1

    def _program(self, op: Op[T]) -> Generator[_Primitive, Any, T]:
        """``op`` with each of its requests made a retried exchange; an exchange's error is raised inside
        ``op``, at its ``yield``, so an endpoint may handle it (``ready`` does)."""
        ok, value = True, None
        while True:
            try:
                step = op.send(value) if ok else op.throw(value)
            except StopIteration as done:
                return done.value
            if isinstance(step, Request):
                try:
                    ok, value = True, (yield from self._exchange(step))
                except Exception as exc:  # noqa: BLE001 - handed to the endpoint, which re-raises what it does not handle
                    ok, value = False, exc
            else:
                ok, value = True, (yield step)

    def _request_kwargs(self, req: Request, stack: ExitStack, is_async: bool) -> dict[str, Any]:
        kw: dict[str, Any] = req.make(stack, is_async) if req.make else {}
        headers = {**(req.headers or {}), **kw.pop("headers", {})}
        if headers:
            kw["headers"] = headers
        if req.params:
            kw["params"] = {k: v for k, v in req.params.items() if v is not None}
        if req.json is not None:
            kw["json"] = req.json
        if req.upload:
            kw["timeout"] = self.upload_timeout
        return kw


def _as_method(method: Callable[..., Any], op: Callable[..., Any], owner: str, returns: str) -> None:
    """Give a client's method the endpoint's name, documentation and signature (for help() and IDEs)."""
    sig = inspect.signature(op)
    answer = str(sig.return_annotation).removeprefix("Op[").removesuffix("]")
    me = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__name__ = op.__name__
    method.__qualname__ = f"{owner}.{op.__name__}"
    method.__doc__ = op.__doc__
    method.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[me, *sig.parameters.values()], return_annotation=returns.format(answer)
    )


def _sync(op: Callable[P, Op[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(op(*args, **kwargs))

    _as_method(method, op, "Client", "{}")
    return method


def _async(op: Callable[P, Op[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(op(*args, **kwargs))

    _as_method(method, op, "AsyncClient", "Coroutine[Any, Any, {}]")
    return method


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
        sleep: How to pause between tries and polls (tests pass a recorder).
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

    def _run(self, op: Op[T]) -> T:
        program, answer = self._program(op), None
        while True:
            try:
                step = program.send(answer)
            except StopIteration as done:
                return done.value
            answer = self._carry_out(step)

    def _carry_out(self, step: _Primitive) -> Any:
        if isinstance(step, _Try):
            req = step.request
            with ExitStack() as stack:
                try:
                    return self._http.request(req.method, req.path, **self._request_kwargs(req, stack, False))
                except httpx.TransportError as exc:
                    return exc
        if isinstance(step, Sleep):
            self._sleep(step.seconds)
        else:
            step.callback(step.job)
        return None

    # The endpoints (client.endpoints), each one line: its documentation and signature come with it.
    health = _sync(endpoints.health)
    ready = _sync(endpoints.ready)
    push_model = _sync(endpoints.push_model)
    push_dataset = _sync(endpoints.push_dataset)
    model = _sync(endpoints.model)
    models = _sync(endpoints.models)
    dataset = _sync(endpoints.dataset)
    datasets = _sync(endpoints.datasets)
    families = _sync(endpoints.families)
    submit_job = _sync(endpoints.submit_job)
    submit_spec = _sync(endpoints.submit_spec)
    job = _sync(endpoints.job)
    jobs = _sync(endpoints.jobs)
    cancel = _sync(endpoints.cancel)
    wait = _sync(endpoints.wait)
    evaluate = _sync(endpoints.evaluate)
    report = _sync(endpoints.report)
    report_csv = _sync(endpoints.report_csv)
    report_html = _sync(endpoints.report_html)
    compare = _sync(endpoints.compare)
    artifacts = _sync(endpoints.artifacts)
    artifact = _sync(endpoints.artifact)
    download_artifacts = _sync(endpoints.download_artifacts)
    leaderboard = _sync(endpoints.leaderboard)
    gate = _sync(endpoints.gate)


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

    async def _run(self, op: Op[T]) -> T:
        program, answer = self._program(op), None
        while True:
            try:
                step = program.send(answer)
            except StopIteration as done:
                return done.value
            answer = await self._carry_out(step)

    async def _carry_out(self, step: _Primitive) -> Any:
        if isinstance(step, _Try):
            req = step.request
            with ExitStack() as stack:
                try:
                    return await self._http.request(req.method, req.path, **self._request_kwargs(req, stack, True))
                except httpx.TransportError as exc:
                    return exc
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        else:
            res = step.callback(step.job)
            if inspect.isawaitable(res):
                await res
        return None

    health = _async(endpoints.health)
    ready = _async(endpoints.ready)
    push_model = _async(endpoints.push_model)
    push_dataset = _async(endpoints.push_dataset)
    model = _async(endpoints.model)
    models = _async(endpoints.models)
    dataset = _async(endpoints.dataset)
    datasets = _async(endpoints.datasets)
    families = _async(endpoints.families)
    submit_job = _async(endpoints.submit_job)
    submit_spec = _async(endpoints.submit_spec)
    job = _async(endpoints.job)
    jobs = _async(endpoints.jobs)
    cancel = _async(endpoints.cancel)
    wait = _async(endpoints.wait)
    evaluate = _async(endpoints.evaluate)
    report = _async(endpoints.report)
    report_csv = _async(endpoints.report_csv)
    report_html = _async(endpoints.report_html)
    compare = _async(endpoints.compare)
    artifacts = _async(endpoints.artifacts)
    artifact = _async(endpoints.artifact)
    download_artifacts = _async(endpoints.download_artifacts)
    leaderboard = _async(endpoints.leaderboard)
    gate = _async(endpoints.gate)
