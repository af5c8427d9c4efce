"""A client generated from the committed OpenAPI document by openapi-python-client, as a user would make one,
and the README's job run through it (tests/api/test_api_devserver.py calls ``exercise`` against `make run`).

``generate`` fails on any generator warning: a warning means a dropped endpoint or a model it could not type.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.servicekit import PY, REPO

OPENAPI = REPO / "openapi" / "openapi.json"
CONFIG = REPO / "openapi" / "generator-config.yml"
PACKAGE = "etm_generated_client"
PNG = b"\x89PNG\r\n\x1a\n"


def generate(out: Path) -> tuple[Path, str]:
    """Generate the client package into ``out / PACKAGE``; the folder to put on ``sys.path`` and the tool's output.

    Raises:
        AssertionError: the generator failed or warned.
    """
    bin_dir = Path(PY).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hook
    proc = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(OPENAPI), "--config", str(CONFIG),
         "--meta", "none", "--output-path", str(out / PACKAGE), "--overwrite"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said
    assert "warning" not in said.lower() and "unable to" not in said.lower(), f"the generator warned:\n{said}"
    return out, said


def exercise(root: Path, base_url: str, model: Path, job: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """With the generated client only: upload ``model`` (with its sidecar), submit ``job``, wait for it, read the
    report, the CSV, the page and one PNG artifact. Returns what it read, for the caller's assertions."""
    sys.path.insert(0, str(root))
    try:
        gen = importlib.import_module(PACKAGE)
        api = importlib.import_module(f"{PACKAGE}.api")
        models = importlib.import_module(f"{PACKAGE}.models")
        types = importlib.import_module(f"{PACKAGE}.types")
        for mod in ("jobs.create_job", "jobs.get_job", "jobs.get_report", "jobs.get_report_csv",
                    "jobs.get_report_html", "jobs.list_artifacts", "jobs.get_artifact", "models.upload_model"):
            importlib.import_module(f"{api.__name__}.{mod}")
    finally:
        sys.path.remove(str(root))
    jobs_api, models_api = api.jobs, api.models
    client = gen.Client(base_url=base_url, raise_on_unexpected_status=True, timeout=60.0)
    with client, open(model, "rb") as f:
        sidecar = model.with_name(model.name + ".json")
        uploaded = models_api.upload_model.sync(
            client=client,
            body=models.UploadModelBody(file=types.File(payload=f, file_name=model.name),
                                        metadata=sidecar.read_text() if sidecar.is_file() else types.UNSET),
        )
        assert isinstance(uploaded, models.ModelOut), uploaded
        submitted = jobs_api.create_job.sync(client=client, body=models.JobRequest.from_dict(job))
        assert isinstance(submitted, models.Job), submitted
        deadline = time.time() + timeout
        current = submitted
        while current.status not in ("succeeded", "failed", "canceled"):
            assert time.time() < deadline, f"job {submitted.id} still {current.status}"
            time.sleep(0.5)
            current = jobs_api.get_job.sync(job_id=submitted.id, client=client)
        assert current.status == "succeeded", current.to_dict()
        report = jobs_api.get_report.sync(job_id=current.id, client=client)
        assert isinstance(report, models.Report), report
        csv_text = jobs_api.get_report_csv.sync(job_id=current.id, client=client)
        page = jobs_api.get_report_html.sync(job_id=current.id, client=client)
        listed = jobs_api.list_artifacts.sync(job_id=current.id, client=client)
        png = next(a.name for a in listed.items if a.media_type == "image/png")
        artifact = jobs_api.get_artifact.sync(job_id=current.id, name=png, client=client)
        return {
            "model": uploaded,
            "job": current,
            "report": report,
            "csv": csv_text,
            "page": page,
            "artifact": artifact.payload.read(),
        }
