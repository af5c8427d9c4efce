"""The OpenAPI document as client generators and linters read it (openapi-python-client, Spectral).

FastAPI derives most of the document from the routes; this module adds, in one pass, what it cannot know:

- security per operation: the bearer key where an operation can answer 401, ``security: []`` (open) elsewhere;
- error responses as ``application/problem+json`` only (FastAPI would also list the route's JSON model);
- the report's JSON Schema (``openapi/report.schema.json``) as ``components.schemas.Report``, its ``$defs``
  hoisted beside it (generators resolve ``#/components/schemas/...`` refs, not a nested ``#/$defs``);
- a job's ``spec`` typed as the ``JobRequest`` it was submitted as;
- the response headers the service sets (``Location``, ``Retry-After``, ``Idempotent-Replayed``,
  ``WWW-Authenticate``).

Operation ids are the route functions' names (``create_job``), set with FastAPI's ``generate_unique_id_function``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi.routing import APIRoute

REPORT = "Report"
_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "The job's URL (poll it).", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before asking again.", "schema": {"type": "integer"}},
    "Idempotent-Replayed": {
        "description": "`true` when the answer repeats an earlier request with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "WWW-Authenticate": {"description": "The scheme to authenticate with (`Bearer`).", "schema": {"type": "string"}},
}
# Which headers which answers carry: (status code prefix, headers); operation-specific ones are listed in the routes.
_HEADERS_BY_STATUS = {"401": ("WWW-Authenticate",), "429": ("Retry-After",), "503": ("Retry-After",)}


def operation_id(route: APIRoute) -> str:
    """``create_job`` rather than FastAPI's ``create_job_v1_jobs_post``: the name generated clients expose."""
    return route.name


def response_headers(*names: str) -> dict[str, Any]:
    """The ``headers`` object of a documented response, from the names of headers the service sets."""
    return {n: _HEADERS[n] for n in names}


def refine(schema: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI generated, with security, problem-only errors, the report schema and headers."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key etm_<id>_<secret> (etm-admin keys create); not needed with ETM_AUTH=off.",
    }
    schemas = components.setdefault("schemas", {})
    schemas.update(report_schemas())
    job = schemas.get("Job", {}).get("properties", {})
    if "spec" in job and "JobRequest" in schemas:
        job["spec"] = {"anyOf": [{"$ref": "#/components/schemas/JobRequest"}, {"type": "null"}],
                       "description": "The job as submitted, with the defaults filled in."}
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            op["security"] = [{"apiKey": []}] if "401" in responses else []
            for code, resp in responses.items():
                content = resp.get("content", {})
                if code[:1] in "45" and "application/problem+json" in content:
                    content.pop("application/json", None)
                names = _HEADERS_BY_STATUS.get(code, ())
                if names:
                    resp.setdefault("headers", {}).update(response_headers(*names))
    return schema


def report_schemas() -> dict[str, Any]:
    """``Report`` and its definitions (``Report_ci``, ...) as component schemas, refs rewritten to match."""
    from etm.report import SCHEMA_FILE  # here: the report module imports torch, the app starts without it

    doc = json.loads(SCHEMA_FILE.read_text())
    defs = doc.pop("$defs", {})
    for key in ("$schema", "$id"):
        doc.pop(key, None)
    doc["title"] = REPORT  # generated clients name the class after the title
    out = {REPORT: doc, **{f"{REPORT}_{name}": d for name, d in defs.items()}}
    return {name: _rewrite_refs(copy.deepcopy(d)) for name, d in out.items()}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = f"#/components/schemas/{REPORT}_{ref.removeprefix('#/$defs/')}"
        for v in node.values():
            _rewrite_refs(v)
    elif isinstance(node, list):
        for v in node:
            _rewrite_refs(v)
    return node
