"""Inspecting an uploaded model for the API: fetch the staged blob, run the checks and the probe in
the sandbox, answer with plain data. The API never loads a model itself (docs/SECURITY.md)."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from etm.errors import BadInput
from etm.sandbox import SandboxCrashed, SandboxTimeout, SandboxUnavailable, limits_for
from etm.sandbox.calls import inspect_model
from jobs.storage import sha256_file
from workers.jobs import WorkerEnv

log = logging.getLogger("etm.worker")


def inspect_upload(env: WorkerEnv, sha: str, filename: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """``{"description": ...}``, ``{"refused": detail}`` or ``{"unavailable": detail}``; never raises for the model."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        return {"refused": "bad content hash"}
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", filename).strip("._")[:120] or "model"
    with tempfile.TemporaryDirectory(prefix="etm-upload-") as tmp:
        path = Path(tmp) / name
        env.store.fetch_blob(sha, path)
        if sha256_file(path) != sha:
            return {"unavailable": "the staged upload changed in the store; upload it again"}
        try:
            return {"description": inspect_model(path, metadata, env.settings, limits_for(env.settings, "inspect"))}
        except BadInput as exc:
            return {"refused": str(exc)}
        except SandboxTimeout as exc:
            return {"refused": f"{name}: loading and probing the model did not finish: {exc}"}
        except SandboxCrashed as exc:
            return {"refused": f"{name}: the model crashed the process that inspected it: {exc}"}
        except SandboxUnavailable as exc:
            log.error("model sandbox unavailable: %s", exc)
            detail = f"the workers cannot inspect models right now ({exc}); operators: see docs/SECURITY.md"
            return {"unavailable": detail}
