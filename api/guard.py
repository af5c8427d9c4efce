"""The first thing a /v1 request meets, before FastAPI reads any of it (FastAPI reads and parses a body before
its dependencies run, so a check there comes too late): an ASGI middleware that

1. authenticates the request (``api.security.auth``): from memory on the event loop when the key was verified
   recently, else on ``ETM_AUTH_VERIFY_THREADS`` threads of its own (argon2 never runs on the event loop nor on
   the request threads). A refusal (401, 403, 429) is answered without reading the body;
2. bounds the body of every operation except the uploads (which stream to disk with their own limits,
   ``api.uploads``) to ``ETM_MAX_JSON_BYTES``: a larger Content-Length is refused at once, a chunked body as
   soon as it passes the limit (413); a body within it is read here and handed on to the route.

An early refusal of a request whose body is still coming says ``Connection: close`` (the protocol,
``api.httpserver``, then stops reading after a short drain instead of reading the rest). A request whose path
exists but not with its method passes through untouched: its 405 reads nothing and needs no key.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import ProblemError, _leaf_routes, problem_response

UPLOADS = {("POST", "/v1/models"), ("POST", "/v1/datasets")}  # stream their bodies (api.uploads)


def too_large_detail(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes, the limit of this operation (ETM_MAX_JSON_BYTES); "
        "send a smaller JSON body (uploads go to POST /v1/models and POST /v1/datasets)"
    )


class RequestGuard:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services
        self._verify_limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        route_path, match = _route(scope)
        if match is Match.PARTIAL:  # the path exists, the method does not: a 405 that reads nothing
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        has_body = _declares_body(request)
        try:
            principal = await self._authenticate(request)
        except ProblemError as exc:
            await _refuse(scope, receive, send, exc, close=has_body)
            return
        scope.setdefault("state", {})["principal"] = principal
        if (scope["method"], route_path) in UPLOADS or not has_body:
            await self.app(scope, receive, send)
            return
        limit = self.services.settings.max_json_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, _too_large(limit), close=True)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away (or the protocol gave up on a stalled body and answered 408)
            body += message.get("body", b"")
            if len(body) > limit:
                await _refuse(scope, receive, send, _too_large(limit), close=True)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _authenticate(self, request: Request) -> Any:
        authenticator = self.services.authenticator
        principal = authenticator.cached(request)
        if principal is None:
            if self._verify_limiter is None:
                self._verify_limiter = anyio.CapacityLimiter(self.services.settings.auth_verify_threads)
            principal = await anyio.to_thread.run_sync(authenticator, request, limiter=self._verify_limiter)
        return principal


def _route(scope: Scope) -> tuple[str | None, Match]:
    """The path of the route that serves this request (FULL), or whether one serves its path with another method
    (PARTIAL), or NONE."""
    best: tuple[str | None, Match] = (None, Match.NONE)
    app = scope.get("app")
    for route in _leaf_routes(getattr(getattr(app, "router", None), "routes", [])):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None), Match.FULL
        if match is Match.PARTIAL:
            best = (None, Match.PARTIAL)
    return best


def _declares_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() not in ("", "0"))


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, too_large_detail(limit), slug="body-too-large", title="Request body too large")


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ProblemError, close: bool) -> None:
    headers = dict(exc.headers)
    if close:
        headers["Connection"] = "close"
    response = problem_response(Request(scope), exc.status, exc.detail, exc.slug, exc.title, headers)
    await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then waits on the real one (for a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
