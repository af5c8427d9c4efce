"""Slow clients: a connection must send its request headers within ETM_HEADER_READ_TIMEOUT_SECONDS (an absolute
deadline: a byte now and then does not extend it), a stalled body gets a 408 after ETM_BODY_READ_TIMEOUT_SECONDS,
and past ETM_MAX_CONNECTIONS the API answers 503 at once; every way of starting the API uses the protocol that
does this (``api.httpserver``).

Real service (own redis-server, the API under uvicorn, no worker), raw sockets on 127.0.0.1, fixed counts and
deadlines. The figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.helpers.http import PROBLEM, problem, read_reply, start_api_only
from tests.servicekit import REPO, ServiceKit

pytestmark = pytest.mark.timeout(300)

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 300


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    k = start_api_only(
        tmp_path_factory.mktemp("slow-clients"),
        {
            "ETM_HEADER_READ_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "ETM_BODY_READ_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "ETM_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    yield k
    k.stop()


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b""
    except (BlockingIOError, TimeoutError):
        return False
    except OSError:
        return True


def test_slowloris_connections_are_closed_at_the_header_deadline(kit: ServiceKit) -> None:
    n, slack = 200, 3.0
    socks, opened, closed_at = [], {}, {}
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", kit.port), timeout=5)
            s.sendall(b"GET /v1/jo")
            s.setblocking(False)
            socks.append(s)
            opened[i] = time.monotonic()
        ok = []
        deadline = time.monotonic() + HEADER_TIMEOUT + slack
        next_byte = time.monotonic()
        while time.monotonic() < deadline and len(closed_at) < n:
            if time.monotonic() >= next_byte:  # one more byte of the request line on each open socket
                for i, s in enumerate(socks):
                    if i not in closed_at:
                        try:
                            s.send(b"b")
                        except OSError:
                            closed_at[i] = time.monotonic()
                next_byte = time.monotonic() + 0.5
                t = time.perf_counter()
                ok.append((kit.client.get("/healthz", timeout=5).status_code, time.perf_counter() - t))
            readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed_at], [], [], 0.1)
            for s in readable:
                if _closed(s):
                    closed_at[socks.index(s)] = time.monotonic()
    finally:
        for s in socks:
            s.close()
    lived = [closed_at[i] - opened[i] for i in closed_at]
    print(f"{n} slowloris connections: {len(closed_at)} closed by the server within "
          f"{HEADER_TIMEOUT + slack:.0f} s (after {min(lived, default=0):.1f}-{max(lived, default=0):.1f} s); "
          f"normal requests meanwhile: {[(c, round(t * 1000)) for c, t in ok]}")
    assert len(closed_at) == n, f"{n - len(closed_at)} of {n} slowloris connections still open"
    assert max(lived) <= HEADER_TIMEOUT + slack
    assert ok and all(code == 200 and t < 3.0 for code, t in ok), ok


def test_a_stalled_body_gets_408(kit: ServiceKit) -> None:
    s = socket.create_connection(("127.0.0.1", kit.port), timeout=5)
    with s:
        t = time.monotonic()
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"candidates\": [")
        status, headers, body = read_reply(s, BODY_TIMEOUT + 4)
        took = time.monotonic() - t
        print(f"stalled body: {status} after {took:.1f} s")
        assert status == 408, (status, body)
        assert headers["content-type"] == PROBLEM and headers["connection"] == "close"
        answer = json.loads(body)
        assert answer["type"].endswith("/body-timeout") and "ETM_BODY_READ_TIMEOUT_SECONDS" in answer["detail"]
        assert BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + 2
        s.settimeout(3)
        assert s.recv(10) == b""  # and the connection is closed


def test_past_the_connection_cap_the_api_answers_503_until_idle_ones_time_out(kit: ServiceKit) -> None:
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 10):  # connected, nothing sent
            idle.append(socket.create_connection(("127.0.0.1", kit.port), timeout=5))
        time.sleep(0.5)
        with httpx.Client(base_url=kit.base_url, timeout=10) as c:
            r = c.get("/v1/jobs")
            p = problem(r, 503)
            assert p["type"].endswith("/too-many-connections") and "ETM_MAX_CONNECTIONS" in p["detail"], p
            assert int(r.headers["retry-after"]) >= 1
            # The idle connections never sent headers: closed at the header deadline, and the API serves again.
            time.sleep(HEADER_TIMEOUT + 1.5)
            assert sum(_closed_within(s, 0.5) for s in idle) == len(idle)
            assert c.get("/v1/jobs").status_code == 200
    finally:
        for s in idle:
            s.close()


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        return s.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_every_way_of_starting_the_api_uses_the_hardened_protocol() -> None:
    flag = "api.httpserver:HardenedH11Protocol"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert flag in " ".join(compose["services"]["api"]["command"])
    assert flag in (REPO / "docker" / "Dockerfile").read_text().rsplit("CMD", 1)[1]
    assert flag in (REPO / "api" / "devserver.py").read_text()
    assert flag in (REPO / "tests" / "servicekit.py").read_text()

