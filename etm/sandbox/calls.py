"""The sandboxed calls the rest of the project makes: inspect an upload, evaluate a job, salience maps.

Each call names exactly the host paths the child may read (the model files with their sidecars, the
dataset folders, shard partials) and nothing else. Datasets are opened here first (``open_dataset``
writes their validation index, which the child then reads from its read-only view instead of
validating every image again); images are data for Pillow, not programs, and are validated as before.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from etm.cache_paths import index_dir
from etm.sandbox.files import UnsafeOutput, read_bytes
from etm.sandbox.runner import Limits, Outcome, run
from etm.settings import Settings

_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


def model_files(path: Path) -> list[Path]:
    """A model file and the sidecars ``read_sidecar`` looks for, where they exist."""
    path = Path(path)
    out = [path]
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file() and cand not in out:
            out.append(cand)
    return out


def _isolation(settings: Settings | None) -> str:
    return settings.sandbox if settings is not None else "bwrap"


def inspect_model(path: Path, metadata: dict[str, Any] | None, settings: Settings, limits: Limits) -> dict[str, Any]:
    """The description (format, metadata, capabilities) of a model file, computed in the sandbox.

    Raises:
        ModelRefused: the loader's reason; SandboxTimeout / SandboxCrashed: it hung or crashed.
    """
    with tempfile.TemporaryDirectory(prefix="etm-inspect-") as tmp:
        outcome = run(
            {"op": "inspect", "path": str(Path(path).resolve()), "metadata": metadata},
            model_files(path),
            limits,
            scratch=Path(tmp),
            isolation=_isolation(settings),
        )
        return _json_safe(outcome.result)


def inspect_models(
    items: list[tuple[Path, dict[str, Any] | None]], settings: Settings, limits: Limits
) -> list[dict[str, Any] | Exception]:
    """``inspect_model`` for several files in one sandboxed process (one interpreter start for all): each
    entry is the description or the exception that model was refused with. For the project's own files
    (the built-ins); an upload is inspected alone, so that its budget is its own."""
    from etm.sandbox import protocol

    if not items:
        return []
    with tempfile.TemporaryDirectory(prefix="etm-inspect-") as tmp:
        outcome = run(
            {"op": "inspect", "items": [{"path": str(Path(p).resolve()), "metadata": m} for p, m in items]},
            [f for p, _ in items for f in model_files(p)],
            replace(limits, wall_seconds=limits.wall_seconds * len(items), cpu_seconds=limits.cpu_seconds * len(items)),
            scratch=Path(tmp),
            isolation=_isolation(settings),
        )
    answers = outcome.result.get("items")
    if not isinstance(answers, list) or len(answers) != len(items):
        raise RuntimeError("the inspection process answered for the wrong number of models")
    out: list[dict[str, Any] | Exception] = []
    for a in answers:
        if isinstance(a, dict) and isinstance(a.get("description"), dict):
            out.append(_json_safe(a["description"]))
        else:
            err = a.get("error") if isinstance(a, dict) else None
            parsed = protocol.parse_line(json.dumps(err).encode()) if isinstance(err, dict) else None
            out.append(protocol.rebuild_error(parsed) if parsed else RuntimeError("malformed inspection answer"))
    return out


def _json_safe(obj: Any) -> Any:
    """Round-trip through JSON: what crosses the boundary is data, bounded to plain types."""
    return json.loads(json.dumps(obj))


@dataclass
class Inputs:
    """How the refs of a spec map to host paths."""

    models: dict[str, Path]
    datasets: dict[str, Path]

    def readable(self) -> list[Path]:
        files = [f for p in self.models.values() for f in model_files(p)]
        # The validation indexes ``prepare_datasets`` wrote (kept in a cache folder, not in the datasets): the
        # child reads them instead of validating every image again. Absent when the cache is not writable.
        indexes = [d for d in (index_dir(p) for p in self.datasets.values()) if d.is_dir()]
        return [*files, *self.datasets.values(), *indexes]


def prepare_datasets(spec: Any, inputs: Inputs) -> None:
    """Validate and index the job's datasets outside the sandbox (the child sees them read-only)."""
    from etm.datasets import open_dataset

    open_dataset(inputs.datasets[spec.dataset], split=spec.split)
    if spec.ood_dataset is not None:
        open_dataset(inputs.datasets[spec.ood_dataset], split=spec.ood_split)


def evaluate(
    spec: Any,
    inputs: Inputs,
    settings: Settings | None,
    limits: Limits,
    mode: str = "whole",
    shard: tuple[int, int] | None = None,
    partials: Iterable[Path] = (),
    artifacts: bool = False,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    scratch: Path | None = None,
    gpu: bool = False,
    ort_threads: int | None = None,
) -> Outcome:
    """Run one evaluation step in the sandbox; its files are under ``outcome.scratch / "out"``.

    ``mode``: ``whole`` (report, CSV, artifacts), ``inset`` (``partial.npz`` of ``shard``), ``finish``
    (merge ``partials``, then as ``whole``). The caller removes ``outcome.scratch`` when done.
    """
    prepare_datasets(spec, inputs)
    partials = [Path(p).resolve() for p in partials]
    request = {
        "op": "evaluate",
        "spec": spec.model_dump(mode="json"),
        "models": {k: str(Path(v).resolve()) for k, v in inputs.models.items()},
        "datasets": {k: str(Path(v).resolve()) for k, v in inputs.datasets.items()},
        "threads": limits.threads,
        "ort_threads": limits.threads if ort_threads is None else ort_threads,
        "mode": mode,
        "shard": list(shard) if shard else None,
        "partials": [str(p) for p in partials],
        "artifacts": artifacts,
        "device": "cuda" if gpu else None,
    }
    scratch = scratch or Path(tempfile.mkdtemp(prefix="etm-eval-"))
    try:
        return run(
            request,
            [*inputs.readable(), *partials],
            limits,
            scratch=scratch,
            on_progress=progress,
            should_cancel=should_cancel,
            gpu=gpu,
            isolation=_isolation(settings),
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def read_artifacts(out: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The artifact files the child listed, by plain name (``files.read_bytes``: no link is followed)."""
    result = {}
    for name in names:
        if not isinstance(name, str) or not _ARTIFACT_NAME.fullmatch(name):
            raise UnsafeOutput(f"the model process listed an artifact with a bad name: {str(name)[:80]!r}")
        result[name] = read_bytes(out, f"artifacts/{name}")
    return result
