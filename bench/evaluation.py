"""Figure 2: the full evaluation against the bare model passes it needs.

One candidate (one model), N in-set images, every measure family with default parameters (the
paper's 12 transforms, 7 noise levels, deletion steps 0..100 by 10 and the paper's blur), plus the
out-of-set pass when an out-of-set dataset is there. The floor is the model passes the plan needs:
per image ``1`` clean salience pass plus ``passes_per_image`` of each measure (salience passes and
forward passes both count as one forward: the fast path's salience pass *is* one forward), run as
that many bare batched ONNX Runtime forwards at the job's batch size; the out-of-set clean pass adds
one per out-of-set image. Ratio = evaluation wall time / floor time (target <= 1.3).

A second, instrumented run splits the evaluation's time into model passes and everything else per
measure family (by wrapping methods from the outside; nothing in ``etm/`` is changed).

Two row sets, each named after its model: the 64-px benchmark CNN (N images, batch 64; its forwards
are ~0.25 ms per image, so the measures' own work dominates: the stricter test) and torchvision
ResNet-50 at 224 px, the paper's setting (random weights, seed 0, 2 classes, the export figure 1
uses; 8 benchmark faces and 8 non-faces rendered at 224 px by ``benchdata.faces``; batch 8, with
deletion chunks bounded to 20 composites at 224 px by ``chunk_pixels``; ~2 min of CPU on 1 thread).
The row ``evaluation / bare passes`` is the worst of the models' ratios. ``--quick`` skips the
ResNet-50 rows (export ~20 s, rows ~2 min).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import BENCH_DIR, Report, best, export_cached, ort_session, set_threads

TARGET = 1.3


def _facenet_meta() -> dict[str, Any]:
    return {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": ["real", "synthetic"],
            "positive_class": "synthetic", "score_activation": "softmax"}


def build_facenet() -> torch.nn.Module:
    """The benchmark's detector architecture (``benchdata/net.py``) with seeded random weights: the
    same cost per pass as the trained families, for when those are not on disk."""
    from benchdata.net import FaceNet

    torch.manual_seed(0)
    return FaceNet().eval()


def default_inputs(quick: bool = False) -> dict[str, Any]:
    """Model and data for figures 2, 3 and 5.

    Model: the trained benchmark CNN ``benchdata/models/xent/run0.onnx`` when present, else the same
    architecture with random weights exported here (64 px, 8x8 maps), else (``quick``, or no
    ``benchdata/net.py``) the tests' TinyNet. Data: the generated benchmark faces
    (``python -m benchdata.generate``) when present, else a generated 2-class set.
    """
    if quick:
        return tiny_inputs()
    try:
        from benchdata import paths
    except ImportError:  # pragma: no cover - the benchmark package is part of the repo
        return tiny_inputs()
    trained = paths.MODELS_DIR / "xent" / "run0.onnx"
    faces_ok = (paths.FACES_DIR / "manifest.csv").exists()
    if trained.exists() and trained.with_suffix(".pt2").exists():
        model, build, what = trained, None, "trained benchmark CNN xent/run0 (64 px, 8x8 maps)"
    else:
        try:
            model = export_cached("facenet64-random", build_facenet, "onnx", 64, _facenet_meta())
        except ImportError:
            return tiny_inputs()
        build, what = build_facenet, "benchmark CNN architecture, random weights (64 px, 8x8 maps)"
    if faces_ok:
        data, split, train, ood = paths.FACES_DIR, "test", "train", paths.NONFACES_DIR
        what += " on the synthetic faces"
    else:
        data, split, train, ood = tiny_inputs(size=64)["dataset"], None, None, None
        what += " on a generated 2-class set"
    return {"model": model, "build": build, "dataset": data, "split": split, "train_split": train,
            "ood": ood if ood is not None and ood.exists() else None, "what": what, "tag": "CNN 64 px"}


def tiny_inputs(root: Path | None = None, n_per_class: int = 64, size: int = 40) -> dict[str, Any]:
    from tests.helpers.tiny import TinyNet, export, tiny_dataset

    root = root or BENCH_DIR / "tiny"
    model = root / "tinynet.onnx"
    data = root / f"data{n_per_class}-{size}"
    if not model.exists():
        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        export(TinyNet(), model, "onnx", size=32)
    if not data.exists():
        tiny_dataset(data, n_per_class=n_per_class, size=size)

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return TinyNet().eval()

    return {"model": model, "build": build, "dataset": data, "split": None, "train_split": None, "ood": None,
            "what": "tests' TinyNet (32 px, 8x8 maps) on a generated 2-class set", "tag": "TinyNet 32 px"}


def faces_at(size: int, n_images: int, n_ood: int, root: Path | None = None) -> tuple[Path, Path]:
    """``n_images`` benchmark faces (half real, half synthetic, with their masks) and ``n_ood`` non-face
    scenes, rendered at ``size`` px by ``benchdata.faces`` (the test split's and the non-faces' seeds of
    ``python -m benchdata.generate``, so the same scenes as the 64-px set, drawn at this resolution
    instead of upscaled). Written once as class folders; returns (in-set root, out-of-set root)."""
    from PIL import Image

    from benchdata import faces
    from benchdata.generate import FORMAT_VERSION, SPLIT_IDS, GenerationConfig

    cue = GenerationConfig().shortcut_eval  # the generated test split's (no training shortcut)
    # a new renderer or cue share, new files
    root = root or BENCH_DIR / f"faces{size}-{n_images}-{n_ood}-v{FORMAT_VERSION}-cue{cue:g}"
    inset, ood = root / "inset", root / "ood"
    if not (root / "done").exists():
        r = faces.render_faces([0, SPLIT_IDS["test"]], n_images, size, faces.SEEN_GENERATORS, cue, cue)
        for i, (img, mask, label) in enumerate(zip(r.images, r.masks, r.labels, strict=True)):
            cls = faces.CLASS_NAMES[int(label)]
            (inset / cls).mkdir(parents=True, exist_ok=True)
            (inset / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(inset / cls / f"test_{i:06d}.png")
            Image.fromarray(mask).save(inset / "masks" / f"test_{i:06d}.png")
        (ood / "real").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(faces.render_nonfaces([0, SPLIT_IDS["nonfaces"]], n_ood, size, cue).images):
            Image.fromarray(img).save(ood / "real" / f"nonface_{i:06d}.png")
        (root / "done").touch()  # written last: an interrupted run renders again
    return inset, ood


def resnet_inputs(n_images: int = 8, n_ood: int = 8, size: int = 224) -> dict[str, Any]:
    """Figure 2 in the paper's setting: the ResNet-50 export of figure 1 (``bench.salience``: random
    weights, seed 0, 2 classes, the same cached file) on faces and non-faces rendered at ``size`` px."""
    from bench.common import IMAGENET_META
    from bench.salience import build_resnet50

    model = export_cached(f"resnet50-{size}", build_resnet50, "onnx", size, dict(IMAGENET_META))
    try:
        data, ood = faces_at(size, n_images, n_ood)
        on = f"{n_images} benchmark faces + {n_ood} non-faces rendered at {size} px"
    except ImportError:  # pragma: no cover - the benchmark package is part of the repo
        data, ood = tiny_inputs(n_per_class=max(1, n_images // 2), size=size)["dataset"], None
        on = f"a generated 2-class set at {size} px"
    return {"model": model, "build": build_resnet50, "dataset": data, "split": None, "train_split": None,
            "ood": ood, "what": f"torchvision ResNet-50, random weights (seed 0), 2 classes ({size} px, 7x7 maps) "
            f"on {on}", "tag": f"ResNet-50 {size} px"}


def make_spec(inputs: dict[str, Any], n_images: int, batch_size: int = 64, split: str | None = "default",
              bootstrap: int = 1000, measures: list[str] | None = None):
    from etm.spec import EvaluationSpec

    return EvaluationSpec(
        candidates=[{"name": "cand", "models": [str(inputs["model"])]}],
        dataset=str(inputs["dataset"]),
        split=inputs["split"] if split == "default" else split,
        ood_dataset=str(inputs["ood"]) if inputs.get("ood") else None,
        measures=measures or ["all"],
        batch_size=batch_size,
        max_images=n_images,
        bootstrap_resamples=bootstrap,
        overlays=0,
        seed=0,
    )


def passes_per_image(spec) -> dict[str, dict[str, int]]:
    from etm.evaluation import Resolver, load_families, make_measures

    fam = load_families(spec, Resolver(threads=1))[0]
    k = len(fam.models)
    out = {"clean": {"salience": k, "forward": 0}}
    for name, m in make_measures(spec, fam).items():
        out[name] = m.passes_per_image(k)
    return out


def bare_floor(model_path: Path, n_in: int, n_ood: int, per_image: int, batch_size: int, size: tuple[int, int],
               threads: int = 1) -> float:
    """Seconds for the bare batched ORT forwards the evaluation needs."""
    sess = ort_session(model_path, threads)
    inp = sess.get_inputs()[0].name
    out = sess.get_outputs()[0].name
    rng = np.random.default_rng(0)
    full = rng.standard_normal((batch_size, 3, *size)).astype(np.float32)
    t0 = time.perf_counter()
    for n, passes in ((n_in, per_image), (n_ood, 1)):
        for b in range(math.ceil(n / batch_size)):
            x = full[: min(batch_size, n - b * batch_size)]
            for _ in range(passes):
                sess.run([out], {inp: x})
    return time.perf_counter() - t0


@contextmanager
def instrument():
    """Accumulate seconds in model passes (ORT ``forward``) and in each measure's ``per_image``
    (self time, model passes excluded) by wrapping the methods for the duration of the block."""
    from etm.measures import MEASURES
    from etm.models.onnx_model import OnnxModel

    acc: dict[str, float] = defaultdict(float)
    stack: list[float] = []  # model-pass seconds accumulated inside the current measure
    originals: list[tuple[type, str, Any]] = []

    def wrap_forward(fn):
        def inner(self, *a, **kw):
            t = time.perf_counter()
            try:
                return fn(self, *a, **kw)
            finally:
                dt = time.perf_counter() - t
                acc["model passes (ORT forward incl. preprocessing)"] += dt
                if stack:
                    stack[-1] += dt

        return inner

    def wrap_measure(name, fn):
        def inner(self, *a, **kw):
            stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(self, *a, **kw)
            finally:
                dt = time.perf_counter() - t
                acc[f"measure {name}: own work"] += dt - stack.pop()

        return inner

    originals.append((OnnxModel, "forward", OnnxModel.forward))
    OnnxModel.forward = wrap_forward(OnnxModel.forward)
    for name, cls in MEASURES.items():
        for meth in ("per_image", "per_image_oos"):
            if meth in cls.__dict__:
                originals.append((cls, meth, cls.__dict__[meth]))
                setattr(cls, meth, wrap_measure(name, cls.__dict__[meth]))
    try:
        yield acc
    finally:
        for cls, meth, fn in originals:
            setattr(cls, meth, fn)


def export_matches_eager(inputs: dict[str, Any], threads: int = 1) -> tuple[bool, str]:
    """The exported model and the eager module it came from give the same logits (a stale cached
    export cannot pass silently); (True, "no eager module") for a trained file without a builder."""
    build = inputs.get("build")
    if build is None:
        return True, "no eager module (trained export)"
    from etm.models.loader import load_model

    ours = load_model(inputs["model"], threads=threads)
    torch.manual_seed(1)
    x = torch.rand(2, 3, *ours.metadata.input_size)
    with torch.no_grad():
        eager = build()(ours.preprocess(x))
    diff = float((eager - ours.logits(x)).abs().max() / eager.abs().max().clamp_min(1e-6))
    return diff < 1e-3, f"max |diff| / max |logit| = {diff:.2e} on 2 images"


def model_rows(rep: Report, inputs: dict[str, Any], n_images: int, reps: int = 1, batch_size: int = 64,
               threads: int = 1) -> float:
    """Figure 2 for one model: rows and checks named ``"<tag>: ..."``; returns evaluation / bare passes."""
    from etm.evaluation import Resolver, evaluate

    tag = inputs["tag"]
    ok, detail = export_matches_eager(inputs, threads)
    rep.check(f"{tag}: export = eager model (logits)", ok, detail)
    spec = make_spec(inputs, n_images, batch_size)
    passes = passes_per_image(spec)
    per_image = sum(p["salience"] + p["forward"] for p in passes.values())
    wall, floor = [], []
    result = None
    for _ in range(reps):  # interleaved: evaluation, then its floor, on the same load
        t0 = time.perf_counter()
        result = evaluate(spec, Resolver(threads=threads))
        wall.append(time.perf_counter() - t0)
        cand = result.report["candidates"][0]
        n_in = result.report["dataset"]["n_images"]
        n_ood = (result.report.get("ood_dataset") or {}).get("n_images", 0) or 0
        size = tuple(cand["runs"][0]["metadata"]["input_size"])
        floor.append(bare_floor(Path(inputs["model"]), n_in, n_ood, per_image, batch_size, size, threads))
    assert result is not None
    reported = result.report["candidates"][0].get("passes_per_image")
    rep.check(f"{tag}: passes_per_image in the report = the measures' own count", reported == passes,
              f"report {reported} vs measures {passes}")
    values = {k: r["value"] for k, r in result.report["candidates"][0]["measures"].items()}
    missing = [k for k in ("entropy.spatial", "oos.noise", "geometry.ssim", "degradation.deletion") if
               values.get(k) is None or not np.isfinite(values[k])]
    rep.check(f"{tag}: headline values present", not missing, f"missing: {missing}" if missing else "all finite")
    # where the time goes: one more run, instrumented (a few timer calls per batch), which also
    # counts as a repetition of the wall time, followed by one more floor
    with instrument() as acc:
        t0 = time.perf_counter()
        evaluate(spec, Resolver(threads=threads))
        inst_total = time.perf_counter() - t0
    wall.append(inst_total)
    floor.append(bare_floor(Path(inputs["model"]), n_in, n_ood, per_image, batch_size, size, threads))
    ratio = best(wall) / best(floor)
    model = Path(inputs["model"])
    rep.setup[tag] = {"what": inputs["what"], "N": n_in, "N_ood": n_ood, "batch": batch_size, "reps": reps,
                      "model": str(model.relative_to(model.parents[2])) if len(model.parents) > 2 else str(model),
                      "bare passes per in-set image": per_image,
                      "report_seconds": result.report["provenance"]["timing"]["seconds"]}
    rep.row(f"{tag}: evaluation wall time", best(wall), "s", note=f"N={n_in} in-set + {n_ood} out-of-set images, "
            f"batch {batch_size}; best of {len(wall)}: {', '.join(f'{w:.1f}' for w in wall)} s")
    rep.row(f"{tag}: bare batched ORT forwards it needs", best(floor), "s",
            note=f"{per_image} per in-set image + 1 per out-of-set image")
    rep.row(f"{tag}: evaluation / bare passes", ratio, "x", f"<= {TARGET}", ratio <= TARGET)
    for name, p in passes.items():
        rep.row(f"{tag}: passes per image: {name}", p["salience"] + p["forward"], "",
                note=f"salience {p['salience']}, forward {p['forward']}")
    acc["rest: model load, dataset listing/validation/decoding, summaries, bootstrap"] = inst_total - sum(acc.values())
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        rep.row(f"{tag}: time share: {k}", 100 * v / inst_total, "%", note=f"{v:.2f} s of {inst_total:.2f} s")
    return ratio


def run(n_images: int = 256, reps: int = 1, batch_size: int = 64, threads: int = 1, quick: bool = False,
        inputs: dict[str, Any] | None = None, resnet_n: int = 8, resnet_ood: int = 8, resnet_batch: int = 8) -> Report:
    """Figure 2 on the small model (``inputs``, default ``default_inputs(quick)``; N = ``n_images``) and,
    unless ``quick`` or ``resnet_n`` is 0, on ResNet-50 at 224 px (``resnet_n`` + ``resnet_ood`` images,
    batch ``resnet_batch``)."""
    thread_note = set_threads(threads)
    inputs = inputs or default_inputs(quick)
    sets = [inputs]
    rep = Report("2", "full evaluation vs its bare model passes, per model")
    rep.setup["threads"] = thread_note
    if quick or resnet_n <= 0:
        rep.skipped.append("ResNet-50 224 px rows: " + ("not in --quick (~2.5 min of CPU)" if quick
                                                        else "resnet_n = 0"))
    else:
        sets.append(resnet_inputs(resnet_n, resnet_ood))
    ratios: dict[str, float] = {}
    for inp in sets:
        big = inp is not inputs
        ratios[inp["tag"]] = model_rows(rep, inp, resnet_n if big else n_images, reps,
                                        resnet_batch if big else batch_size, threads)
    worst = max(ratios, key=lambda k: ratios[k])
    rep.row("evaluation / bare passes", ratios[worst], "x", f"<= {TARGET}", ratios[worst] <= TARGET,
            note=f"the worst model: {worst}; " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    rep.rows.insert(0, rep.rows.pop())  # the headline first
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="toy sizes, no ResNet-50 rows")
    ap.add_argument("--resnet-n", type=int, default=8, help="ResNet-50 in-set images (0: no ResNet-50 rows)")
    ap.add_argument("--resnet-ood", type=int, default=8, help="ResNet-50 out-of-set images")
    ap.add_argument("--resnet-batch", type=int, default=8)
    a = ap.parse_args(argv)
    from bench.run import print_reports

    return print_reports([run(a.n, a.reps, quick=a.quick, resnet_n=a.resnet_n, resnet_ood=a.resnet_ood,
                              resnet_batch=a.resnet_batch)])


if __name__ == "__main__":
    raise SystemExit(main())
