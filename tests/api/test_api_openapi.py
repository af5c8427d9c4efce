"""The committed OpenAPI document is the app's, and every documented error is problem+json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from api.examples import DEMO_JOB, EXAMPLE_JOB
from api.export_openapi import OPENAPI_FILE, openapi_text
from api.schemas import JobRequest

REPO_ROOT = Path(__file__).resolve().parents[2]


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


SPECTRAL = REPO_ROOT / "tools" / "openapi-lint" / "node_modules" / ".bin" / "spectral"


def test_openapi_passes_spectral_with_the_committed_ruleset() -> None:
    """Spectral (installed by `make venv` with npm ci from tools/openapi-lint) finds no warning or error."""
    assert SPECTRAL.is_file(), "Spectral is missing: `make venv` installs it with npm (Node.js 18+ on PATH)"
    proc = subprocess.run(
        [str(SPECTRAL), "lint", str(OPENAPI_FILE), "--ruleset", str(REPO_ROOT / "openapi" / ".spectral.yaml"),
         "--fail-severity=warn"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_method_enum_names_are_distinct_for_generators() -> None:
    """``gradcam`` and ``gradcam++`` are one Python name to a generator unless the document names them."""
    method = json.loads(OPENAPI_FILE.read_text())["components"]["schemas"]["JobRequest"]["properties"]["method"]
    names = method["x-enum-varnames"]
    assert len(names) == len(set(names)) == len(method["enum"]) and "GRADCAM_PLUS_PLUS" in names
    JobRequest.model_validate({**EXAMPLE_JOB, "method": "gradcam++"})  # still accepted as input


def test_client_builtin_names_are_the_documents() -> None:
    """The names `etm --help` lists are written from the document (`make openapi`); the check fails when stale."""
    from api.export_openapi import NAMES_FILE, names_text

    assert NAMES_FILE.read_text() == names_text(json.loads(OPENAPI_FILE.read_text())), "run `make openapi`"
    from client import builtin_names

    assert "gradcam++" in builtin_names.METHODS and set(builtin_names.OPT_IN) <= set(builtin_names.MEASURES)
