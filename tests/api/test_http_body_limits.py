"""A /v1 request is authenticated before its body is read, and JSON bodies are bounded (ETM_MAX_JSON_BYTES, from
Content-Length and while a chunked body streams in): the API's memory does not grow with the body.

Real service (own redis-server, the API under uvicorn, no worker), real sockets: the API process's peak resident
memory (VmHWM, reset through /proc/<pid>/clear_refs) is read around each 80 MiB body. The figures are printed
(pytest -s shows them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.http import PROBLEM, MiB, problem, start_api_only, stream_request
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)

MAX_JSON = 1 * MiB
BIG = 80 * MiB  # the bodies sent: 80 times the limit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    k = start_api_only(
        tmp_path_factory.mktemp("body-limits"),
        # No worker: an upload is answered 503 after ETM_INSPECT_WAIT_SECONDS, i.e. not refused as a JSON body.
        {"ETM_AUTH": "keys", "ETM_AUTH_CACHE_SECONDS": "60", "ETM_MAX_JSON_BYTES": str(MAX_JSON),
         "ETM_INSPECT_WAIT_SECONDS": "2"},
    )
    yield k
    k.stop()


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _settle(pid: int, timeout: float = 120) -> None:
    """Wait until the API's memory is steady (its warm-up thread imports torch after the start)."""
    deadline = time.monotonic() + timeout
    last, steady = _status_kib(pid)["VmRSS"], 0
    while time.monotonic() < deadline and steady < 3:
        time.sleep(1)
        now = _status_kib(pid)["VmRSS"]
        steady = steady + 1 if abs(now - last) < 2048 else 0
        last = now


def _peak_growth_mib(pid: int, send: Any) -> tuple[Any, float]:
    """Run ``send()``; how far the API's resident memory peaked above where it was before (VmHWM after a reset)."""
    base = _status_kib(pid)["VmRSS"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    result = send()
    time.sleep(0.3)
    return result, (_status_kib(pid)["VmHWM"] - base) / 1024



def test_big_bodies_are_refused_before_they_are_read(kit: ServiceKit) -> None:
    pid = kit.procs["api"].pid
    key = kit.create_key("tenant-size")
    with kit.client_for(key) as c:  # verified once (argon2 allocates 19 MiB): cached for the rest
        assert c.get("/v1/jobs").status_code == 200
    _settle(pid)
    figures = {}
    cases = [
        ("no key, Content-Length", {"key": None}, 401),
        ("no key, chunked", {"key": None, "chunked": True}, 401),
        ("key, Content-Length", {"key": key}, 413),
        ("key, chunked", {"key": key, "chunked": True}, 413),
    ]
    for name, kw, status in cases:
        reply, growth = _peak_growth_mib(pid, lambda kw=kw: stream_request(kit.port, "/v1/jobs", BIG, **kw))
        figures[name] = (reply.status, round(growth, 1), reply.sent // MiB, round(reply.seconds, 2))
        print(f"{name}: {BIG // MiB} MiB body -> {reply.status}, API peak RSS +{growth:.1f} MiB, "
              f"{reply.sent / MiB:.1f} MiB sent before the answer, {reply.seconds:.2f} s")
        assert reply.status == status, (name, figures, reply.body[:300])
        assert reply.headers["content-type"] == PROBLEM
        answer = reply.json()
        assert answer["status"] == status
        if status == 413:
            assert answer["detail"] == (
                f"the request body is larger than {MAX_JSON} bytes, the limit of this operation (ETM_MAX_JSON_BYTES); "
                "send a smaller JSON body (uploads go to POST /v1/models and POST /v1/datasets)"
            ), answer
        else:
            assert "API key" in answer["detail"]
        assert growth < 16, f"{name}: the API's memory grew by {growth:.0f} MiB for a {BIG // MiB} MiB body: {figures}"
    # A body within the limit is read and judged as before (422: not a job), with or without Content-Length.
    with kit.client_for(key) as c:
        near = {"candidates": "x" * (MAX_JSON - 100)}
        assert c.post("/v1/jobs", json=near).status_code == 422
        chunks = iter([json.dumps(near).encode()])
        r = c.post("/v1/jobs", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        over = c.post("/v1/jobs", json={"candidates": "x" * MAX_JSON})
        assert problem(over, 413)["type"].endswith("/body-too-large")
        assert over.headers["connection"] == "close"
        # Uploads are not JSON bodies: they stream to disk under their own limits (here: refused as no model).
        r = c.post("/v1/models", files={"file": ("m.onnx", b"\0" * (2 * MAX_JSON))})
        assert r.status_code != 413 and "ETM_MAX_JSON_BYTES" not in r.text, r.text[:300]

