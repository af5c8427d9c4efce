"""The committed OpenAPI document is the app's, and every documented error is problem+json."""

from __future__ import annotations

import json

from api.examples import DEMO_JOB, EXAMPLE_JOB
from api.export_openapi import OPENAPI_FILE, openapi_text
from api.schemas import JobRequest


def test_committed_openapi_matches_the_app() -> None:
    assert OPENAPI_FILE.read_text() == openapi_text(), "openapi/openapi.json is out of date: run `make openapi`"


def test_openapi_is_3_1_and_errors_are_problems() -> None:
    doc = json.loads(OPENAPI_FILE.read_text())
    assert doc["openapi"].startswith("3.1")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    assert "application/problem+json" in resp.get("content", {}), (method, path, code)
    assert {"/v1/jobs", "/v1/models", "/v1/datasets", "/v1/families", "/healthz", "/readyz", "/metrics"} <= set(
        doc["paths"]
    )


def test_examples_are_valid_job_bodies() -> None:
    JobRequest.model_validate(EXAMPLE_JOB)
    JobRequest.model_validate(DEMO_JOB)


def test_readme_curl_example_is_the_tested_one() -> None:
    """The README's job example must be api.examples.EXAMPLE_JOB (which the devserver test runs)."""
    import pytest

    from api.examples import example_body
    from tests.servicekit import REPO

    readme = (REPO / "README.md").read_text() if (REPO / "README.md").is_file() else ""
    if "/v1/jobs \\" not in readme:
        pytest.skip("the README has no curl example for POST /v1/jobs yet")
    assert example_body() in readme, "README's curl body differs from api/examples.py EXAMPLE_JOB"
