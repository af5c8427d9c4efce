"""The client's HTTP behaviour against a tiny local stub server (it stands in for a busy service): retries on
503/429 honouring Retry-After within bounds, problem+json errors, connection failures, upload bodies
rebuilt for every try, and the streamed zip of a dataset folder."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from client import ApiError, AsyncClient, Client, ConnectionFailed, RetryPolicy
from client.retry import parse_retry_after
from client.uploads import dataset_files, zip_stream
from tests.servicekit import free_port

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"


class Stub:
    """Answers each path from a queue of ``(status, headers, body)``; the last answer repeats. Records every
    request (method, path, headers, body)."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str], Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = self.headers.get("Content-Length")
                if length is not None:
                    body = self.rfile.read(int(length))
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = b""
                path = self.path.split("?")[0]
                stub.requests.append({"method": self.command, "path": path, "headers": dict(self.headers),
                                      "body": body, "t": time.monotonic()})
                queue = stub.script.get(path) or [(404, {"Content-Type": PROBLEM},
                                                   {"title": "Not found", "status": 404, "detail": "no such path"})]
                status, headers, payload = queue.pop(0) if len(queue) > 1 else queue[0]
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, path: str, *answers: tuple[int, dict[str, str], Any]) -> None:
        self.script[path] = list(answers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


JOB = {"id": "j-1", "status": "queued", "progress": {"stage": "queued", "done": 0, "total": 0, "fraction": 0.0},
       "cache_hit": False, "links": {}}
BUSY = {"type": "https://explain-to-me.dev/problems/unavailable", "title": "Service unavailable", "status": 503,
        "detail": "the job database (Redis) cannot be reached; retry shortly"}


def test_503_then_200_waits_retry_after(stub: Stub) -> None:
    stub.on("/v1/jobs/j-1", (503, {"Retry-After": "1", "Content-Type": PROBLEM}, BUSY), (200, {}, JOB))
    events = []
    with Client(stub.url, on_retry=events.append) as c:
        t = time.monotonic()
        job = c.job("j-1")
        took = time.monotonic() - t
    assert job.id == "j-1" and job.status == "queued"
    assert 0.9 <= took < 5, took
    assert [(e.status, e.wait, e.attempt) for e in events] == [(503, 1.0, 1)]
    gap = stub.requests[1]["t"] - stub.requests[0]["t"]
    assert gap >= 0.95, f"retried after {gap:.2f} s, Retry-After said 1"


def test_429_with_http_date_and_cap(stub: Stub) -> None:
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3600), usegmt=True)
    stub.on("/v1/jobs/j-1", (429, {"Retry-After": later}, {"title": "Too many requests", "status": 429}),
            (429, {"Retry-After": "0"}, {"title": "Too many requests", "status": 429}), (200, {}, JOB))
    waits: list[float] = []
    c = Client(stub.url, retry=RetryPolicy(max_retry_after=2.5), sleep=waits.append)
    assert c.job("j-1").id == "j-1"
    c.close()
    assert waits == [2.5, 0.0]  # an hour asked for, capped at 2.5 s; then exactly what was asked


def test_gives_up_with_the_problem_after_bounded_tries(stub: Stub) -> None:
    stub.on("/v1/jobs/j-1", (503, {"Retry-After": "1", "Content-Type": PROBLEM}, BUSY))
    waits: list[float] = []
    with Client(stub.url, retry=RetryPolicy(attempts=3), sleep=waits.append) as c, pytest.raises(ApiError) as exc:
        c.job("j-1")
    assert waits == [1.0, 1.0] and len(stub.requests) == 3
    err = exc.value
    assert (err.status, err.title, err.slug) == (503, "Service unavailable", "unavailable")
    assert "Redis" in err.detail and err.retry_after == 1.0 and BUSY.items() <= err.problem.items()

    stub.requests.clear()
    waits.clear()
    with Client(stub.url, retry=RetryPolicy(attempts=10, budget=2.5), sleep=waits.append) as c, \
            pytest.raises(ApiError):
        c.job("j-1")
    assert waits == [1.0, 1.0]  # a third wait would pass the 2.5 s budget


def test_other_errors_raise_at_once_with_problem_fields(stub: Stub) -> None:
    problem = {"type": "https://explain-to-me.dev/problems/invalid-request", "title": "Invalid request",
               "status": 422, "detail": "candidates.0.models: unknown model 'm-nope'", "instance": "/v1/jobs",
               "errors": [{"loc": ["body", "candidates"], "msg": "unknown", "type": "value_error"}]}
    stub.on("/v1/jobs", (422, {"Content-Type": PROBLEM}, problem))
    stub.on("/v1/jobs/j-2/report", (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"))
    with Client(stub.url, sleep=lambda s: None) as c:
        with pytest.raises(ApiError) as exc:
            c.submit_job({"a": ["m-nope"]}, "d-1")
        assert exc.value.status == 422 and exc.value.detail.startswith("candidates.0.models")
        assert exc.value.problem["errors"][0]["loc"] == ["body", "candidates"]
        assert str(exc.value) == "422 Invalid request: candidates.0.models: unknown model 'm-nope'"
        with pytest.raises(ApiError) as exc:
            c.report("j-2")
        assert exc.value.status == 502 and "bad gateway" in exc.value.detail  # not problem+json: made into one
    assert len([r for r in stub.requests if r["path"] == "/v1/jobs"]) == 1


def test_submit_retries_with_the_same_idempotency_key(stub: Stub) -> None:
    stub.on("/v1/jobs", (503, {"Retry-After": "0"}, BUSY), (202, {"Retry-After": "2"}, JOB))
    with Client(stub.url, sleep=lambda s: None) as c:
        job = c.submit_job({"a": ["m-1", "m-2"]}, "d-1", measures=["entropy"], seed=None)
    keys = [r["headers"]["Idempotency-Key"] for r in stub.requests]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("etm-client-")
    body = json.loads(stub.requests[0]["body"])
    assert body == {"candidates": [{"name": "a", "models": ["m-1", "m-2"]}], "dataset": "d-1", "measures": ["entropy"]}
    assert job.retry_after == 2.0


def test_connection_refused_raises_connection_failed() -> None:
    waits: list[float] = []
    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=3), sleep=waits.append) as c, \
            pytest.raises(ConnectionFailed, match="cannot reach"):
        c.health()
    assert len(waits) == 2


def test_api_key_and_env_defaults(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    stub.on("/healthz", (200, {}, {"status": "ok"}))
    monkeypatch.setenv("ETM_API_URL", stub.url)
    monkeypatch.setenv("ETM_API_KEY", "s3cret")
    with Client() as c:
        assert c.health() == {"status": "ok"}
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer s3cret"
    assert stub.requests[0]["headers"]["User-Agent"].startswith("etm-client/")


def _multipart_file(body: bytes) -> tuple[str, bytes]:
    head, _, rest = body.partition(b"\r\n\r\n")
    filename = head.split(b'filename="')[1].split(b'"')[0].decode()
    return filename, rest[: rest.rindex(b"\r\n--")]


def test_folder_upload_is_rebuilt_for_a_retry(stub: Stub, tmp_path: Path) -> None:
    folder = tmp_path / "mydata"
    for label in ("real", "fake"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            (folder / label / f"{i}.png").write_bytes(bytes([i]) * (5000 + i))
    (folder / ".DS_Store").write_bytes(b"junk")
    record = {"id": "d-1", "name": "mydata", "sha256": "0" * 64, "n_images": 6}
    stub.on("/v1/datasets", (503, {"Retry-After": "0"}, BUSY), (201, {}, record))
    with Client(stub.url, sleep=lambda s: None) as c:
        ds = c.push_dataset(folder)
    assert ds.id == "d-1" and ds.created
    assert len(stub.requests) == 2
    first, second = (_multipart_file(r["body"]) for r in stub.requests)
    assert first == second and stub.requests[1]["headers"].get("Transfer-Encoding") == "chunked"
    name, archive = second
    assert name == "mydata.zip"
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert sorted(zf.namelist()) == sorted(f"{lab}/{i}.png" for lab in ("real", "fake") for i in range(3))
        assert zf.read("fake/2.png") == bytes([2]) * 5002 and zf.testzip() is None


def test_model_upload_sends_metadata_and_archives_go_as_they_are(stub: Stub, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07onnx-bytes")
    tar = tmp_path / "data.tar.gz"
    tar.write_bytes(b"\x1f\x8b not really")
    stub.on("/v1/models", (200, {}, {"id": "m-1", "sha256": "1" * 64, "format": "onnx"}))
    stub.on("/v1/datasets", (200, {}, {"id": "d-9", "sha256": "2" * 64}))
    with Client(stub.url) as c:
        m = c.push_model(model, {"input_size": [32, 32]})
        d = c.push_dataset(tar)
        with pytest.raises(ValueError, match="neither a folder nor an archive"):
            c.push_dataset(model)
        with pytest.raises(FileNotFoundError):
            c.push_model(tmp_path / "missing.onnx")
        with pytest.raises(json.JSONDecodeError):
            c.push_model(model, "{not json")
    assert (m.id, m.created, d.id) == ("m-1", False, "d-9")
    body = stub.requests[0]["body"]
    assert b'name="metadata"' in body and b'{"input_size": [32, 32]}' in body and b"onnx-bytes" in body
    assert _multipart_file(stub.requests[1]["body"])[1] == tar.read_bytes()


def test_zip_stream_holds_little_and_keeps_everything(tmp_path: Path) -> None:
    big = tmp_path / "d" / "a" / "big.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(bytes(range(256)) * 20_000)  # 5 MB
    (tmp_path / "d" / "b.txt").write_text("hello")
    pieces = list(zip_stream(tmp_path / "d", chunk=1 << 18))
    assert max(len(p) for p in pieces) <= (1 << 18) * 2, "the stream held more than about one chunk"
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as zf:
        assert zf.read("a/big.bin") == big.read_bytes() and zf.read("b.txt") == b"hello"
    assert [n for _, n in dataset_files(tmp_path / "d")] == ["a/big.bin", "b.txt"]


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    past = email.utils.format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_async_client_retries_and_streams(stub: Stub, tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "1.png").write_bytes(b"png" * 100)
    done = {**JOB, "status": "succeeded", "progress": {"stage": "done", "done": 1, "total": 1, "fraction": 1.0}}
    stub.on("/v1/jobs/j-1", (503, {"Retry-After": "0"}, BUSY), (200, {}, JOB), (200, {}, done))
    stub.on("/v1/datasets", (429, {"Retry-After": "0"}, {"title": "Too many requests", "status": 429}),
            (201, {}, {"id": "d-2", "sha256": "3" * 64}))

    async def run() -> tuple[Any, Any, list[str]]:
        seen: list[str] = []
        async with AsyncClient(stub.url) as c:
            job = await c.wait("j-1", on_progress=lambda j: seen.append(j.status), poll=0.05)
            ds = await c.push_dataset(tmp_path / "d")
        return job, ds, seen

    job, ds, seen = asyncio.run(run())
    assert job.status == "succeeded" and seen == ["queued", "succeeded"]
    assert ds.id == "d-2" and ds.created
    uploads = [r for r in stub.requests if r["path"] == "/v1/datasets"]
    assert len(uploads) == 2 and _multipart_file(uploads[0]["body"]) == _multipart_file(uploads[1]["body"])
    with zipfile.ZipFile(io.BytesIO(_multipart_file(uploads[1]["body"])[1])) as zf:
        assert zf.namelist() == ["x/1.png"]


def test_progress_printer_draws_a_bar_on_a_terminal_and_lines_in_logs() -> None:
    from client.cli import progress_printer
    from client.types import Job

    def job(status: str, stage: str, done: int, total: int, frac: float) -> Job:
        return Job.from_json({"id": "j-1", "status": status, "links": {},
                              "progress": {"stage": stage, "done": done, "total": total, "fraction": frac}})

    states = [job("queued", "queued", 0, 0, 0.0), job("running", "in-set", 8, 32, 0.22),
              job("running", "in-set", 9, 32, 0.25), job("running", "in-set", 32, 32, 0.9),
              job("succeeded", "done", 1, 1, 1.0)]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    update, close = progress_printer("j-1", tty)
    for j in states:
        update(j)
    close()
    assert "100%" in tty.getvalue() and "|" in tty.getvalue() and "succeeded" in tty.getvalue()

    log = io.StringIO()
    ticks = iter([0.0, 10.0, 11.0, 100.0, 130.0])  # seconds at each update
    update, close = progress_printer("j-1", log, clock=lambda: next(ticks))
    for j in states:
        update(j)
    close()
    # ETA from the rate of this wait: 0.22 done in 10 s -> 0.78 left takes ~35 s; at 0.9 after 100 s, 11 s.
    assert log.getvalue().splitlines() == [
        "j-1: queued (0%, elapsed 0 s)",
        "j-1: running in-set 8/32 (22%, elapsed 10 s, ETA 35 s)",
        "j-1: running in-set 32/32 (90%, elapsed 1 min 40 s, ETA 11 s)",
        "j-1: succeeded (100%, elapsed 2 min 10 s)",
    ]


def test_an_endpoint_handles_its_own_errors_in_both_clients(stub: Stub) -> None:
    """``ready`` turns the service's error answer into False: the error is raised inside the endpoint (written
    once, in client.endpoints) by the sync and the async transport alike."""
    stub.on("/readyz", (500, {"Content-Type": PROBLEM}, {"title": "Not ready", "status": 500, "detail": "no worker"}))
    with Client(stub.url, sleep=lambda s: None) as c:
        assert c.ready() is False

    async def run() -> bool:
        async with AsyncClient(stub.url) as c:
            return await c.ready()

    assert asyncio.run(run()) is False
    stub.on("/readyz", (200, {}, {"status": "ready"}))
    with Client(stub.url) as c:
        assert c.ready() is True


def test_both_clients_offer_the_same_endpoints() -> None:
    import inspect

    from client import endpoints

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(getattr(cls, n)) for n in dir(cls)
                if not n.startswith("_") and n not in ("close", "aclose") and callable(getattr(cls, n))}

    sync, asyn = public(Client), public(AsyncClient)
    assert sync.keys() == asyn.keys() and "wait" in sync and "push_dataset" in sync
    for name, sig in sync.items():
        assert list(sig.parameters) == ["self", *inspect.signature(getattr(endpoints, name)).parameters], name
        assert asyn[name].parameters == sig.parameters, name
        assert getattr(Client, name).__doc__ == getattr(endpoints, name).__doc__, name
