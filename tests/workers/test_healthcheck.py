"""The containers' worker healthcheck (``python -m workers.healthcheck``) against a real worker process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.servicekit import PY, REPO, ServiceKit

pytestmark = pytest.mark.timeout(180)


def test_healthcheck_passes_for_a_consuming_worker_and_fails_otherwise(tmp_path: Path) -> None:
    kit = ServiceKit(tmp_path, n_workers=1).start()
    try:
        def check(name: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([PY, "-m", "workers.healthcheck", name], cwd=REPO, env=kit.env(),
                                  capture_output=True, text=True, timeout=60, check=False)

        ok = check("w0@etm-test")  # the kit's worker node name
        assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
        missing = check("nobody@etm-test")
        assert missing.returncode == 1 and "no answer" in missing.stderr
        kit.kill("worker0")  # the process is gone: the same check now fails
        gone = check("w0@etm-test")
        assert gone.returncode == 1, gone.stdout
    finally:
        kit.stop()
