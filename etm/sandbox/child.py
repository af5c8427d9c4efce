"""Inside the sandbox: read ``/scratch/request.json``, load and run the models, write the results.

Every model load and model run of the service and of local ``etm`` happens here, in a process that
``etm.sandbox.bwrap`` confined. Requests (``op``):

- ``inspect``: ``{path, metadata}`` -> the model's description (format, metadata, capabilities), as
  ``Registry`` stores it; the upload probe (a forward of blank images) runs here too. ``{items: [...]}``
  inspects several trusted files in one process (the built-ins: one start instead of twenty).
- ``evaluate``: ``{spec, models: {ref: path}, datasets: {ref: path}, threads, mode, shard, partials,
  artifacts}``; ``mode`` ``whole`` writes ``report.json``, ``per_image.csv`` and ``artifacts/``;
  ``inset`` writes ``partial.npz`` (one shard); ``finish`` merges the given partial files first.
- ``salience``: ``{model, images, split, method, target, layer, seed, batch_size}`` -> ``maps.npz``.

Results go to ``/scratch/out``; the result line carries only names and small JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from etm.sandbox import protocol
from etm.sandbox.bwrap import SCRATCH

# /scratch under bubblewrap; the scratch folder itself in ETM_SANDBOX=process mode.
HOME = Path(os.environ.get("ETM_SANDBOX_SCRATCH", SCRATCH))
OUT = HOME / "out"


def _progress(stage: str, done: int, total: int) -> None:
    protocol.emit({"event": "progress", "stage": stage, "done": int(done), "total": int(total)})


class _StepEmitter:
    """Progress inside one salience call (``etm.salience.progress``) as ``step:<method>`` events: the first
    chunk of a call, its last, and at most one every ``interval`` seconds between (a chunk can take ms)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.last, self.key = interval, 0.0, ("", -1, -1)

    def __call__(self, method: str, done: int, total: int) -> None:
        import time

        from etm.salience.progress import STEP_PREFIX

        now = time.monotonic()
        new_call = method != self.key[0] or total != self.key[2] or done < self.key[1]
        self.key = (method, done, total)
        if new_call or done >= total or now - self.last >= self.interval:
            self.last = now
            _progress(STEP_PREFIX + method, done, total)


def _inspect(req: dict[str, Any]) -> dict[str, Any]:
    if "items" not in req:
        return _describe(req)
    results = []  # several models in one process (the built-ins): one model's refusal does not stop the others
    for item in req["items"]:
        try:
            results.append({"description": _describe(item)})
        except Exception as exc:  # noqa: BLE001 - reported per model, as data
            results.append({"error": protocol.error_message(exc)})
    return {"items": results}


def _describe(req: dict[str, Any]) -> dict[str, Any]:
    from etm.models.capabilities import capabilities_version
    from etm.models.loader import load_model
    from etm.models.metadata import ModelMetadata

    meta = ModelMetadata.model_validate(req["metadata"]) if req.get("metadata") is not None else None
    model = load_model(Path(req["path"]), metadata=meta, device=req.get("device") or "cpu", threads=1)
    # The version of the code that computed the capability table: a stored copy of another is recomputed.
    return {**model.describe(), "capabilities_version": capabilities_version()}


def _resolver(req: dict[str, Any]) -> Any:
    from etm.evaluation import Resolver

    models: dict[str, str] = req["models"]
    datasets: dict[str, str] = req["datasets"]

    def lookup(table: dict[str, str], what: str) -> Any:
        def get(ref: str) -> Path:
            if ref not in table:
                raise FileNotFoundError(f"{what} {ref!r} was not given to the sandbox")
            return Path(table[ref])

        return get

    return Resolver(
        model_path=lookup(models, "model"),
        dataset_path=lookup(datasets, "dataset"),
        threads=int(req.get("ort_threads", req["threads"])),  # ONNX Runtime's intra-op threads (0: its default)
    )


def _evaluate(req: dict[str, Any]) -> dict[str, Any]:
    from etm.evaluation import Partial, evaluate, finish, run_inset
    from etm.spec import EvaluationSpec

    spec = EvaluationSpec.model_validate(req["spec"])
    resolver = _resolver(req)
    OUT.mkdir(parents=True, exist_ok=True)
    mode = req["mode"]
    if mode == "inset":
        part = run_inset(spec, resolver, tuple(req["shard"]) if req.get("shard") else None, _progress)
        part.save(OUT / "partial.npz")
        return {"files": ["partial.npz"], "n_images": part.n_images}
    if mode == "finish":
        result = finish(spec, [Partial.load(Path(p)) for p in req["partials"]], resolver, _progress)
    else:
        result = evaluate(spec, resolver, _progress)
    result.write(OUT)
    names: list[str] = []
    if req.get("artifacts"):
        from etm.artifacts import compute_artifacts

        (OUT / "artifacts").mkdir(exist_ok=True)
        for name, data in sorted(compute_artifacts(spec, result.report, resolver, _progress).items()):
            (OUT / "artifacts" / name).write_bytes(data)
            names.append(name)
    return {"files": ["report.json", "per_image.csv"], "artifacts": names}


def _salience(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from etm.datasets import iter_batches, load_dataset
    from etm.evaluation import image_seeds
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

    model = load_model(Path(req["model"]), threads=int(req.get("ort_threads", req["threads"])))
    ds = load_dataset(Path(req["images"]), split=req.get("split"))
    maps, ups, targets, scores = [], [], [], []
    done = 0
    for batch in iter_batches(ds, range(len(ds)), int(req["batch_size"]), tuple(model.metadata.input_size)):
        res = compute_salience(
            model, batch.images, req["method"], req["target"], req["layer"], seeds=image_seeds(req["seed"], batch.keys)
        )
        maps.append(res.native.cpu())
        ups.append(res.upsampled.cpu())
        targets.append(res.targets.cpu())
        scores.append(res.scores.cpu())
        done += len(batch.keys)
        _progress("salience", done, len(ds))
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT / "maps.npz",
        files=np.array([it.key for it in ds.items]),
        maps=torch.cat(maps).numpy(),
        upsampled=torch.cat(ups).numpy(),
        targets=torch.cat(targets).numpy(),
        scores=torch.cat(scores).numpy(),
    )
    return {"files": ["maps.npz"], "n_images": len(ds), "warnings": model.load_warnings()}


_OPS = {"inspect": _inspect, "evaluate": _evaluate, "salience": _salience}


def main() -> None:
    """Run the request; report the result or the error on stdout, exit 0 either way (1: a bug here)."""
    import logging

    # Warnings and above of the domain (e.g. a batch halved after running out of memory) reach the worker's log.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        req = json.loads((HOME / "request.json").read_text())
        op = _OPS[req["op"]]
        import torch

        torch.set_num_threads(max(1, int(req.get("threads") or 1)))
        from etm.salience.progress import step_reporting

        with step_reporting(_StepEmitter()):
            payload = op(req)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent, as data
        import traceback

        traceback.print_exc(file=sys.stderr)
        protocol.emit(protocol.error_message(exc))
        return
    protocol.emit({"event": "result", "payload": payload})
