"""RFC 9457 problem details: every error this API answers is ``application/problem+json``.

``type`` is a URI under ``https://explain-to-me.dev/problems/`` naming the kind of problem, ``title``
its short human name, ``status`` the HTTP status, ``detail`` what went wrong *this* time and what to
do about it, ``instance`` the request path. Validation errors add ``errors`` (one entry per field).
Exceptions of the domain and of the jobs layer answer as ``jobs.problems``' table says (the workers record a
job's error by the same table). Unexpected exceptions become a 500 without a traceback (the traceback goes to
the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from jobs.problems import PROBLEM_BASE, PROBLEMS, detail_of, kind_of, row_of

log = logging.getLogger("etm.api")
PROBLEM_JSON = "application/problem+json"
FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's 400 when a JSON body cannot be decoded

_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(..., examples=[PROBLEM_BASE + "not-found"])
    title: str = Field(..., examples=["Not found"])
    status: int = Field(..., examples=[404])
    detail: str = Field(..., examples=["no job j-0123456789abcdef0123; list jobs at GET /v1/jobs"])
    instance: str | None = Field(None, examples=["/v1/jobs/j-0123456789abcdef0123"])
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors (422 only).")


class ProblemError(Exception):
    """Raise in a route to answer with a problem."""

    def __init__(
        self,
        status: int,
        detail: str,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        default_slug, default_title = _SLUGS.get(status, ("error", "Error"))
        self.status, self.detail = status, detail
        self.slug, self.title = slug or default_slug, title or default_title
        self.headers = headers or {}


def problem_response(
    request: Request,
    status: int,
    detail: str,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    default_slug, default_title = _SLUGS.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error codes (always including 422 and 500)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 422, 500}):
        out[code] = {
            "model": Problem,
            "description": _SLUGS.get(code, ("", "Error"))[1],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return out


def _http_detail(status: int, detail: Any, request: Request) -> str:
    if status == 404 and (detail in (None, "Not Found")):
        return f"nothing at {request.url.path}; the API lives under /v1 (see /docs)"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}; see /docs for the methods it accepts"
    return str(detail)


def _allowed_methods(request: Request) -> str:
    """Every method served at the request's path. Starlette's 405 names only the first route that matched
    the path, but each method is its own route here, and RFC 9110 wants all of them in ``Allow``."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


def _leaf_routes(routes: Any) -> Any:
    for route in routes:
        included = getattr(getattr(route, "original_router", None), "routes", None)  # FastAPI's include_router
        yield from _leaf_routes(included) if included is not None else (route,)


async def _unauthenticated(request: Request) -> JSONResponse | None:
    """The 401 of a /v1 request that fails before its route authenticated it (FastAPI parses the body before
    any dependency runs, and a path no route matches has none), so that without a valid key every /v1 answer
    is 401 and nothing about the request is judged for a caller who may not make it."""
    if not request.url.path.startswith("/v1/") or getattr(request.state, "principal", None) is not None:
        return None
    try:  # in a thread: a key not seen recently costs an argon2 verification
        await run_in_threadpool(request.app.state.services.authenticator, request)
    except ProblemError as exc:
        return problem_response(request, exc.status, exc.detail, exc.slug, exc.title, exc.headers)
    return None


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install(app: FastAPI) -> None:
    """Register the problem+json exception handlers on ``app``."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, exc.slug, exc.title, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        if exc.status_code in (400, 404) and (refused := await _unauthenticated(request)) is not None:
            return refused
        if exc.status_code == 400 and exc.detail == FASTAPI_UNPARSABLE_BODY:
            # A body that is not even text (bad UTF-8) is invalid JSON like any other: same 422 as json_invalid.
            return problem_response(
                request, 422, "the request body is not valid JSON: it is not UTF-8 text; send a UTF-8 JSON object"
            )
        return problem_response(
            request, exc.status_code, _http_detail(exc.status_code, exc.detail, request), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (refused := await _unauthenticated(request)) is not None:
            return refused
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(
                request, 422, "the request body is not valid JSON: " + _validation_detail(errors), errors=errors
            )
        return problem_response(request, 422, _validation_detail(errors), errors=errors)

    async def _known(request: Request, exc: Exception) -> JSONResponse:
        status, slug, title = kind_of(exc)
        if status >= 500:
            log.warning("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        retry_after = row_of(exc).retry_after
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return problem_response(request, status, detail_of(exc), slug=slug, title=title, headers=headers)

    for exc_type in PROBLEMS:
        # Not the catch-all (below: it logs the traceback), nor pydantic's ValidationError: request bodies are
        # validated by FastAPI (RequestValidationError, above), so one inside a route is a bug of ours, a 500.
        if exc_type not in (Exception, ValidationError):
            app.add_exception_handler(exc_type, _known)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, 500, "an unexpected error occurred; it has been logged. Retry, and report it if it persists"
        )
