"""Helpers of the HTTP-limit tests (tests/test_http_*.py): an API-only kit and raw-socket requests.

An API-only kit is the kit's own redis-server and the API under uvicorn, no worker: jobs stay queued (so the API
itself ends them on cancel). Raw sockets, because httpx cannot send a body slowly, stop sending when the server
answers early, or show what the server does with a half-sent request.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.servicekit import PY, RedisServer, ServiceKit

PROBLEM = "application/problem+json"
MiB = 2**20


def start_api_only(workdir: Path, env: dict[str, str], inspector: bool = False) -> ServiceKit:
    """Redis and the API (no job worker), configured by ``env``; stop it with ``kit.stop()``. ``inspector``:
    also a worker on the inspection queue only, so that models can be uploaded while jobs stay queued."""
    kit = ServiceKit(workdir, n_workers=0, env=env)
    workdir.mkdir(parents=True, exist_ok=True)
    kit.redis = RedisServer(workdir / "redis")
    kit.start_api()
    if inspector:
        kit._spawn("inspector", [PY, "-m", "workers", "-Q", "inspect", "--hostname", "inspect@etm-test",
                                 "--concurrency", "1"])
    kit.wait_api(90)
    return kit


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """The problem+json body of ``r``, checked to be a ``status`` problem."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == PROBLEM, r.headers
    body = r.json()
    assert body["status"] == status and body["detail"], body
    return body


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)] if xs else float("nan")



@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server let us send before it answered
    seconds: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def read_reply(s: socket.socket, timeout: float) -> tuple[int | None, dict[str, str], bytes]:
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                break
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 "):
            return None, {}, buf
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            data = s.recv(65536)
            if not data:
                break
            body += data
        return int(lines[0].split()[1]), headers, body
    except (ConnectionResetError, TimeoutError, OSError):
        return None, {}, buf


def stream_request(
    port: int, path: str, total: int, *, key: str | None = None, chunked: bool = False, source: str = "127.0.0.1"
) -> Reply:
    """POST a JSON body of ``total`` bytes (one long string field) in 1 MiB pieces, stopping as soon as the server
    answers; then read its answer."""
    prefix, suffix = b'{"candidates":"', b'"}'
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head += [f"Authorization: Bearer {key}"] if key else []
    head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {total}"]
    block = b"x" * MiB

    def pieces() -> Iterator[bytes]:
        left = total - len(prefix) - len(suffix)
        first = True
        while left > 0:
            n = min(left, MiB)
            data = (prefix if first else b"") + block[:n]
            first = False
            left -= n
            if left == 0:
                data += suffix
            yield f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
        if chunked:
            yield b"0\r\n\r\n"

    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    sent = 0
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for piece in pieces():
            if select.select([s], [], [], 0)[0]:
                break  # the server answered (or closed): stop sending
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        status, headers, body = read_reply(s, 60)
    finally:
        s.close()
    return Reply(status, headers, body, sent, time.monotonic() - t)

