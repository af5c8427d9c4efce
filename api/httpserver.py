"""The API's HTTP/1.1 protocol for uvicorn: ``uvicorn api.main:app --http api.httpserver:HardenedH11Protocol``.

uvicorn's h11 protocol plus the limits uvicorn does not have. Its keep-alive timer is reset by every byte
received and nothing times the request itself, so a client that trickles a request holds its connection (and
its memory) forever; ASGI middleware cannot help, it runs only once the headers are complete. Here:

- **Header deadline**: a connection must deliver a complete request line and headers within
  ``ETM_HEADER_READ_TIMEOUT_SECONDS`` of its opening (on a keep-alive connection: of the end of the previous
  answer), else it is closed. The deadline is absolute: a byte now and then does not extend it.
- **Body stall**: while a request body is coming in, a pause of more than ``ETM_BODY_READ_TIMEOUT_SECONDS`` gets
  408 (problem+json, ``Connection: close``), or a plain close when an answer was started already. Pauses that are
  not the client's do not count: the API reading more slowly than the client sends (reading paused), or a client
  waiting for ``100 Continue``.
- **Connection cap**: with more than ``ETM_MAX_CONNECTIONS`` connections open in this process (or as many
  requests in progress), a request is answered 503 with ``Retry-After`` at once, without running the app
  (uvicorn's ``--limit-concurrency``, which also still applies when given, but answered as problem+json).
- **Keep-alive**: idle connections close after ``ETM_KEEP_ALIVE_TIMEOUT_SECONDS``.
- **Early answers end the connection**: an answer sent before the request body was read (401, 413, 408, ...)
  closes the connection instead of reading and discarding the rest of the body. The close lingers: the server
  half-closes after its answer and drains what still arrives for up to ``LINGER_SECONDS``, so that a client
  still sending reads the answer instead of a connection reset.

The settings are read once per process from the environment (``etm.settings.get_settings``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from etm.settings import get_settings
from jobs.problems import PROBLEM_BASE

log = logging.getLogger("etm.http")
LINGER_SECONDS = 2.0
_WARN_EVERY = 10.0
_last_warning: dict[str, float] = {}


def _problem_bytes(status: int, slug: str, title: str, detail: str, path: str) -> bytes:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, "instance": path}
    return json.dumps(body, separators=(",", ":")).encode()


def _warn(message: str, *args: Any) -> None:
    """At most one warning of a kind per ``_WARN_EVERY`` seconds per process: these come in floods."""
    now = time.monotonic()
    if now - _last_warning.get(message, -_WARN_EVERY) >= _WARN_EVERY:
        _last_warning[message] = now
        log.warning(message, *args)


class _TooBusy:
    """The ASGI app that answers instead of the API past the connection cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = _problem_bytes(
            503, "too-many-connections", "Too many connections",
            f"this API process has more than {self.cap} open connections or requests in progress "
            "(ETM_MAX_CONNECTIONS); retry in a few seconds",
            scope.get("path", ""),
        )
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _Transport:
    """The connection's transport as uvicorn's code sees it: ``close`` goes through the protocol (which may
    linger), everything else to the real transport."""

    def __init__(self, transport: asyncio.Transport, protocol: HardenedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_connection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HardenedH11Protocol(H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        s = get_settings()
        self.header_timeout = s.header_read_timeout_seconds
        self.body_timeout = s.body_read_timeout_seconds
        self.timeout_keep_alive = s.keep_alive_timeout_seconds  # type: ignore[assignment] - uvicorn only schedules it
        cap = s.max_connections
        if config.limit_concurrency is not None:
            cap = min(cap, config.limit_concurrency)
        self.max_connections = cap
        self.limit_concurrency = None  # uvicorn's own check would answer text/plain; ``app`` below does it
        self._too_busy = _TooBusy(cap)
        self._real: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._lingering = False

    # uvicorn reads ``self.app`` for every request it starts: past the cap, the 503 answers instead.
    @property
    def app(self) -> Any:
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            _warn("more than %d connections or requests in progress (ETM_MAX_CONNECTIONS): answering 503",
                  self.max_connections)
            return self._too_busy
        return self._app

    @app.setter
    def app(self, value: Any) -> None:
        self._app = value

    # -- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # draining after an early answer: dropped unread
        self._last_data = time.monotonic()
        super().data_received(data)
        if (
            self._body_timer is None
            and self.conn.their_state is h11.SEND_BODY
            and self._real is not None
            and not self._real.is_closing()
        ):
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_deadline)

    def eof_received(self) -> None:
        if self._lingering and self._real is not None:
            self._real.close()  # the client finished sending: the drain is over

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # -- uvicorn hooks -------------------------------------------------------------------------------------
    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and self._real is not None and not self._real.is_closing():
            # Answered before the body was read: end the connection rather than read and discard the rest.
            self.server_state.total_requests += 1
            self.close_connection()
            return
        super().on_response_complete()
        if self._real is not None and not self._real.is_closing() and not self._lingering:
            self._arm_header_deadline()  # the next request's headers are due within the deadline

    def close_connection(self) -> None:
        """Close, lingering when the request body is still arriving (see the module's docstring)."""
        t = self._real
        if t is None or t.is_closing() or self._lingering:
            return
        self._cancel_timers()
        if self.conn.their_state is h11.SEND_BODY and t.can_write_eof():
            self._lingering = True
            self.flow.resume_reading()
            t.write_eof()  # FIN after the answer; what the client still sends is read and dropped
            self.loop.call_later(LINGER_SECONDS, t.close)
            return
        t.close()

    # -- deadlines -----------------------------------------------------------------------------------------
    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE:  # still no complete request line and headers
            _warn("closing connections that sent no complete request headers within %g s "
                  "(ETM_HEADER_READ_TIMEOUT_SECONDS), e.g. %s", self.header_timeout, self.client)
            self.close_connection()

    def _body_deadline(self) -> None:
        self._body_timer = None
        t = self._real
        if t is None or t.is_closing() or self._lingering or self.conn.their_state is not h11.SEND_BODY:
            return
        now = time.monotonic()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._last_data = now  # the wait is the API's (or the protocol's), not the client's
        idle = now - self._last_data
        if idle < self.body_timeout:
            self._body_timer = self.loop.call_later(self.body_timeout - idle, self._body_deadline)
            return
        _warn("request body stalled for %g s (ETM_BODY_READ_TIMEOUT_SECONDS), e.g. from %s: answering 408",
              self.body_timeout, self.client)
        if cycle is not None and not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE:
            self._send_408(cycle)
        self.close_connection()

    def _send_408(self, cycle: Any) -> None:
        body = _problem_bytes(
            408, "body-timeout", "Request body timeout",
            f"the request body stalled: nothing arrived for {self.body_timeout:g} s (ETM_BODY_READ_TIMEOUT_SECONDS); "
            "send the whole body without long pauses, then retry",
            cycle.scope.get("path", ""),
        )
        headers = [*self.server_state.default_headers, (b"content-type", b"application/problem+json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        # The app waiting for the body is told the client is gone; its own answer, if any, is dropped.
        cycle.response_started = cycle.disconnected = True
        cycle.message_event.set()
        out = self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
        out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        assert self._real is not None
        self._real.write(out)
