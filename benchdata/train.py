"""Train the benchmark's two model families and export every run.

Usage::

    python -m benchdata.train --data var/benchmark --out benchdata/models --runs 5

Recipes (same net, data, optimiser, schedule and seeds; only the loss differs):

* ``xent``: cross-entropy.
* ``cyborg``: ``alpha * CE + (1 - alpha) * MSE(CAM, human mask)`` with alpha = 0.5 (Boyd et al.,
  "CYBORG", WACV 2023). Choices:
  - the CAM is that of the **true** class: the annotation says where a person looked to reach the
    true answer, so it is the evidence for that class that should be there; using the predicted
    class would, on a misclassified image, pull the evidence for the wrong answer towards the
    annotated region;
  - the CAM is not ReLU'd and is min-max normalised **per image**, and so is the resized mask:
    CYBORG's loss is an MSE between min-max-normalised maps. A later re-implementation
    normalises over the whole batch instead (``norm="batch"``, kept for comparison). On this
    benchmark the batch variant fails, we believe because a few extreme cells set the batch's
    range and squash every other map towards 0, so the loss barely constrains the typical map:
    with it the cyborg family still leant on the shortcut (accuracy 0.67 on test images whose
    cue contradicts the label vs 0.87 per image; CAM-mask Pearson 0.41 vs 0.63; seed stability
    0.47 vs 0.89; 2 seeds, 8 epochs);
  - the mask is resized to the CAM's 8x8 by area averaging, so a cell's target is the share of it
    the annotation covers (nearest-neighbour would sample one pixel per cell and alias thin regions
    such as the hairline band);
  - gradients of the saliency term flow into the features and into the head's weights.

Each run is exported as ONNX (dynamo exporter, opset 18, dynamic batch) and as a ``torch.export``
program (``.pt2``), each with a ``<file>.json`` metadata sidecar; the ONNX file also carries the
same JSON in ``metadata_props["etm"]``. ``MANIFEST.json`` records hashes, seeds, parameters and
accuracies.

Determinism: with ``torch.use_deterministic_algorithms(True)``, a fixed seed, a fixed thread count
and the same torch build and CPU, a run reproduces its weights bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchdata import paths
from benchdata.data import Split, load_faces_split, load_folder
from benchdata.net import CLASS_NAMES, MEAN, POSITIVE_CLASS, STD, FaceNet, normalise

THREADS = 2


@dataclass(frozen=True)
class Recipe:
    name: str
    alpha: float = 1.0  # weight of cross-entropy; 1.0 = plain cross-entropy
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    widths: tuple[int, int, int, int] = (8, 16, 32, 32)
    norm: str = "image"  # min-max normalisation of CAMs and masks: per "image" or over the "batch"


RECIPES = {"xent": Recipe("xent", alpha=1.0), "cyborg": Recipe("cyborg", alpha=0.5)}


@contextmanager
def deterministic(threads: int = THREADS) -> Iterator[None]:
    """Deterministic CPU kernels and a fixed thread count (reductions may split differently with
    another count); the previous global settings come back afterwards, so that callers such as
    the test-suite keep theirs."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _to_input(images_u8: torch.Tensor) -> torch.Tensor:
    return normalise(images_u8.float() / 255.0)


def mask_targets(masks_u8: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Human masks [N, S, S] uint8 -> [N, h, w] in [0, 1] by area averaging."""
    return F.adaptive_avg_pool2d(masks_u8.float().unsqueeze(1) / 255.0, hw).squeeze(1)


def _batch_minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def _image_minmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(x)


def cyborg_loss(model: FaceNet, x: torch.Tensor, y: torch.Tensor, mask_small: torch.Tensor,
                alpha: float, norm: str = "image") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CYBORG's loss; returns (total, cross-entropy, saliency MSE)."""
    feats = model.forward_features(x)
    logits = model.head(feats)
    ce = F.cross_entropy(logits, y)
    if alpha >= 1.0:
        return ce, ce, torch.zeros(())
    cam_raw = model.cam(feats, y)
    if norm == "batch":
        sal = F.mse_loss(_batch_minmax(cam_raw), _batch_minmax(mask_small))
    else:
        sal = F.mse_loss(_image_minmax(cam_raw), _image_minmax(mask_small))
    return alpha * ce + (1 - alpha) * sal, ce, sal


def train_run(recipe: Recipe, seed: int, train: Split, log: bool = True) -> FaceNet:
    """Train one run; deterministic given ``seed`` (and the torch build, CPU and ``THREADS``)."""
    with deterministic():
        return _train(recipe, seed, train, log)


def _train(recipe: Recipe, seed: int, train: Split, log: bool) -> FaceNet:
    torch.manual_seed(seed)
    model = FaceNet(recipe.widths)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(train)
    steps_per_epoch = (n + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x_all = _to_input(train.images)
        m_all = mask_targets(train.masks, model.forward_features(x_all[:1]).shape[-2:])
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        tot = ce_sum = sal_sum = 0.0
        for i in range(0, n, recipe.batch_size):
            idx = order[i: i + recipe.batch_size]
            loss, ce, sal = cyborg_loss(model, x_all[idx], train.labels[idx], m_all[idx], recipe.alpha,
                                        recipe.norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            ce_sum += ce.item() * len(idx)
            sal_sum += sal.item() * len(idx)
        if log:
            print(f"  [{recipe.name} seed {seed}] epoch {epoch + 1}/{recipe.epochs} loss {tot / n:.4f} "
                  f"ce {ce_sum / n:.4f} sal {sal_sum / n:.4f}", file=sys.stderr)
    model.eval()
    return model


@torch.no_grad()
def predict(model: FaceNet, images_u8: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Logits [N, 2]."""
    return torch.cat([model(_to_input(images_u8[i: i + batch])) for i in range(0, len(images_u8), batch)])


def accuracy(model: FaceNet, split: Split) -> float:
    return float((predict(model, split.images).argmax(1) == split.labels).float().mean())


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def metadata(size: int) -> dict[str, object]:
    """The ``ModelMetadata`` fields of every benchmark model."""
    return {
        "input_size": [size, size],
        "channel_order": "RGB",
        "mean": list(MEAN),
        "std": list(STD),
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "score_activation": "softmax",
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_run(model: FaceNet, stem: Path, size: int, check_images: torch.Tensor) -> dict[str, str]:
    """Write ``stem.onnx`` and ``stem.pt2`` (+ ``.json`` sidecars); verify both against torch."""
    import onnx
    import onnxruntime as ort

    model.eval()
    meta_text = json.dumps(metadata(size), sort_keys=True)
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    stem.parent.mkdir(parents=True, exist_ok=True)

    onnx_path = stem.with_suffix(".onnx")
    prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=18, external_data=False,
                             input_names=["input"], output_names=["logits"],
                             dynamic_shapes={"x": {0: batch}})
    assert prog is not None
    proto = prog.model_proto
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "etm", meta_text
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(onnx_path))

    pt2_path = stem.with_suffix(".pt2")
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, pt2_path)

    for p in (onnx_path, pt2_path):
        Path(f"{p}.json").write_text(json.dumps(metadata(size), indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")

    # The exported files must compute what the trained module computes.
    x = _to_input(check_images)
    with torch.no_grad():
        ref = model(x).numpy()
        got_pt2 = torch.export.load(pt2_path).module()(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    for name, got in (("onnx", got_onnx), ("pt2", got_pt2)):
        err = float(np.abs(got - ref).max())
        if err > 1e-4:
            raise RuntimeError(f"{name} export of {stem} differs from torch by {err:.2e}")
    loaded = onnx.load(str(onnx_path))
    if {p.key: p.value for p in loaded.metadata_props}.get("etm") != meta_text:
        raise RuntimeError(f"{onnx_path} lost its metadata_props['etm']")
    return {"onnx": _sha256(onnx_path), "pt2": _sha256(pt2_path)}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def data_fingerprint(data_dir: Path) -> dict[str, object]:
    """Generation config plus one sha256 over every generated file (path and content), so that a
    family can be matched to the exact bytes it was trained and measured on. Hidden paths are not
    generated: the service leaves its dataset validation index in ``.etm/`` once it opens a split."""
    info = json.loads((data_dir / "benchmark.json").read_text(encoding="utf-8"))
    tree = hashlib.sha256()
    generated = (q for q in data_dir.rglob("*")
                 if q.is_file() and not any(part.startswith(".") for part in q.relative_to(data_dir).parts))
    for p in sorted(generated):
        tree.update(f"{p.relative_to(data_dir).as_posix()}\0{_sha256(p)}\n".encode())
    return {"config": info["config"], "tree_sha256": tree.hexdigest(),
            "faces_manifest_sha256": _sha256(data_dir / "faces" / "manifest.csv")}


def run_seed(recipe: str, k: int) -> int:
    """Training seed of run ``k``: the same for both recipes, so each pair differs only by the loss."""
    return 1000 + k


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchdata.train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=paths.DATA_DIR)
    ap.add_argument("--out", type=Path, default=paths.MODELS_DIR)
    ap.add_argument("--runs", type=int, default=paths.N_RUNS)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = ap.parse_args(argv)

    faces_dir = args.data / "faces"
    train, val, test = (load_faces_split(faces_dir, s) for s in ("train", "val", "test"))
    unseen = load_folder(args.data / "unseen_generators")
    size = int(train.images.shape[-1])
    manifest: dict[str, object] = {
        "description": "Reference benchmark families: the same small CNN trained with cross-entropy "
                       "(xent) and with CYBORG's human-salience loss (cyborg).",
        "data": data_fingerprint(args.data),
        "torch": torch.__version__,
        "threads": THREADS,
        "metadata": metadata(size),
        "recipes": {},
    }
    for name in args.recipes:
        recipe = RECIPES[name]
        runs = []
        for k in range(args.runs):
            seed = run_seed(name, k)
            t0 = time.perf_counter()
            model = train_run(recipe, seed, train)
            secs = time.perf_counter() - t0
            hashes = export_run(model, args.out / name / f"run{k}", size, test.images[:64])
            acc = {"val": accuracy(model, val), "test": accuracy(model, test),
                   "unseen_generators": accuracy(model, unseen)}
            print(f"{name} run{k}: seed {seed}, {secs:.1f} s, " +
                  ", ".join(f"{s} acc {v:.3f}" for s, v in acc.items()), file=sys.stderr)
            runs.append({
                "run": k, "seed": seed, "train_seconds": round(secs, 1),
                "files": {f"{name}/run{k}.{fmt}": h for fmt, h in hashes.items()},
                "accuracy": {s: round(v, 4) for s, v in acc.items()},
            })
        manifest["recipes"][name] = {"params": asdict(recipe), "runs": runs}  # type: ignore[index]
    args.out.mkdir(parents=True, exist_ok=True)
    old_path = args.out / "MANIFEST.json"
    if old_path.exists():
        # Training a subset of recipes keeps the other families' entries, if they were trained on
        # the same data.
        old = json.loads(old_path.read_text(encoding="utf-8"))
        if old.get("data") == manifest["data"]:
            for name, entry in old.get("recipes", {}).items():
                manifest["recipes"].setdefault(name, entry)  # type: ignore[attr-defined]
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
