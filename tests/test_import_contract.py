"""The import-layer contract (pyproject's ``[tool.importlinter]``): the repository keeps it, and a
violation makes ``lint-imports`` (run by ``make test``) fail, naming the broken contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("etm", "jobs", "api", "workers", "client", "benchdata", "bench")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=300,
    )


def test_the_repository_keeps_the_contract() -> None:
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_domain_module_that_imports_the_api_or_redis_breaks_it(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("*.onnx", "*.pt2", "__pycache__", "*.npz", "models")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "etm" / "shortcut.py").write_text("import redis\n\nfrom api.app import create_app\n")
    (tmp_path / "jobs" / "shortcut.py").write_text("from workers.app import make_celery\n")
    r = _lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "Layers: api and workers on jobs, jobs on the domain (etm) BROKEN" in out
    assert "The domain imports no Redis client BROKEN" in out
    assert "etm.shortcut -> api.app" in out and "jobs.shortcut -> workers.app" in out
