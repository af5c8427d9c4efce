"""Figures 1 and 2 on a CUDA GPU (run by ``bench/gpu.sh``; every ratio measured in this one run).

1. Grad-CAM on ResNet-50 (random weights, 2 classes, 224 px): ours against the fastest of the
   eager anchors (TorchCAM, Captum, pytorch-grad-cam) on the same GPU, and against the bare forward
   pass (the floor). Ours runs on the ``.pt2`` export through PyTorch on CUDA (autograd); when
   ``onnxruntime-gpu`` is installed (``CUDAExecutionProvider``), also the ONNX fast path and a bare
   ORT CUDA forward.
2. The full evaluation (all measures, one model, N images) over the bare batched forwards it needs,
   with the model as ``.pt2`` on CUDA (and as ONNX on the CUDA provider when present).

CPU threads: torch 1 (the measures' host-side work), as on the CPU figures.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import IMAGENET_META, Report, best, export_cached, have, interleaved, pearson_rows, set_threads

PEARSON_MIN = 0.999


def _cuda_ort() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def figure1(batch: int = 16, size: int = 224, reps: int = 10, build=None, name: str = "resnet50",
            layer_name: str = "layer4") -> Report:
    from bench.salience import Normalized, _anchors, build_resnet50
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

    build = build or build_resnet50
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rep = Report("7.1", f"Grad-CAM throughput on {dev}, {name} at {size} px, batch {batch}")
    rep.setup = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "batch": batch,
                 "size": size, "reps": reps, "timing": "best of reps, synchronised",
                 "threads": f"torch CPU threads={torch.get_num_threads()}"}
    meta = dict(IMAGENET_META)
    net = build().to(dev)
    torch.manual_seed(1)
    images = torch.rand(batch, 3, size, size, device=dev)
    eager = Normalized(net, meta["mean"], meta["std"]).to(dev).eval()
    fns: dict[str, Any] = {}

    def bare_torch():
        with torch.no_grad():
            return eager(images)

    fns["bare torch forward"] = bare_torch
    ours_native, targets = None, None
    try:
        pt2 = load_model(export_cached(f"{name}-{size}", build, "pt2", size, meta), device=dev)
        res = compute_salience(pt2, images, "gradcam")
        ours_native, targets = res.native.cpu().numpy(), res.targets.tolist()
        fns["ours-pt2 (autograd)"] = lambda: compute_salience(pt2, images, "gradcam")
    except Exception as exc:  # e.g. a torch on the GPU host whose export format our loader rejects
        rep.check("ours .pt2 on CUDA runs", False, f"{type(exc).__name__}: {exc}")
    if _cuda_ort():
        from bench.common import ort_session

        onnx_path = export_cached(f"{name}-{size}", build, "onnx", size, meta)
        ours_onnx = load_model(onnx_path)
        res_o = compute_salience(ours_onnx, images.cpu(), "gradcam")
        if ours_native is None:
            ours_native, targets = res_o.native.numpy(), res_o.targets.tolist()
        fns["ours-onnx (fast path, ORT CUDA)"] = lambda: compute_salience(ours_onnx, images, "gradcam")
        sess = ort_session(onnx_path, 0, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        x_norm = ours_onnx.preprocess(images.cpu()).numpy()
        i_name, o_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        fns["bare ORT CUDA forward"] = lambda: sess.run([o_name], {i_name: x_norm})
    else:
        rep.skipped.append("onnxruntime-gpu not installed: no ONNX fast-path or ORT CUDA rows")
    if targets is None:
        with torch.no_grad():
            targets = eager(images).argmax(1).tolist()
    anchors = _anchors(net, layer_name, targets, dev) if have("pytorch_grad_cam") or have("captum") else {}
    if not anchors:
        rep.skipped.append("anchor packages not installed (bench extra)")
    for a_name, fn in anchors.items():
        if ours_native is not None:
            r = pearson_rows(ours_native, np.asarray(fn(images)))
            rep.check(f"native maps vs {a_name}", bool(np.all(r >= PEARSON_MIN)),
                      f"min Pearson r = {float(np.nanmin(r)):.6f}")
        fns[a_name] = (lambda f: lambda: f(images))(fn)
    times = interleaved(fns, reps=reps, warmup=2)
    rep.timings = times
    t = {k: best(v) for k, v in times.items()}
    for k, v in t.items():
        rep.row(f"{k}: images/s", batch / v, "img/s", note=f"{1e3 * v:.2f} ms per batch")
    ours = [k for k in t if k.startswith("ours")]
    if anchors:
        fastest = min(anchors, key=lambda k: t[k])
        for k in ours:
            r = t[fastest] / t[k]
            rep.row(f"{k} vs fastest anchor ({fastest})", r, "x", ">= 1.5", r >= 1.5)
    for k in ours:
        floor = "bare ORT CUDA forward" if "onnx" in k else "bare torch forward"
        r = t[floor] / t[k]
        rep.row(f"{k} vs {floor} (floor)", r, "x", ">= 0.9", r >= 0.9)
    return rep


def figure2(n_images: int = 256, batch_size: int = 64) -> Report:
    from bench.evaluation import build_facenet, make_spec, passes_per_image, tiny_inputs
    from etm.evaluation import Resolver, evaluate

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rep = Report("7.2", f"full evaluation on {dev} vs its bare batched forwards")
    meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": ["real", "synthetic"],
            "positive_class": "synthetic", "score_activation": "softmax"}
    data = tiny_inputs(n_per_class=max(8, n_images // 2), size=64)["dataset"]
    pt2 = export_cached("facenet64-random", build_facenet, "pt2", 64, meta)
    variants = {f"pt2 on {dev}": pt2}
    if _cuda_ort():
        variants["onnx on ORT CUDA"] = export_cached("facenet64-random", build_facenet, "onnx", 64, meta)
    net = build_facenet().to(dev)
    mean = torch.tensor(meta["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(1, 3, 1, 1)
    for label, path in variants.items():
        inp = {"model": path, "dataset": data, "split": None, "ood": None}
        measures: list[str] | None = None
        try:
            evaluate(make_spec(inp, n_images, batch_size), Resolver(threads=1))  # also warms CUDA up
        except Exception as exc:
            # Find the families that fail on this device, report them, and time the others.
            from etm.spec import MEASURE_FAMILIES

            failing = {}
            for fam in MEASURE_FAMILIES:
                try:
                    evaluate(make_spec(inp, min(n_images, batch_size), batch_size, measures=[fam]),
                             Resolver(threads=1))
                except Exception as e:  # noqa: BLE001 - each failure is reported
                    failing[fam] = f"{type(e).__name__}: {str(e)[:200]}"
            rep.check(f"evaluation runs with all measures ({label})", False,
                      f"{type(exc).__name__}: {exc}; failing families: {failing}\n{traceback.format_exc()[-1500:]}")
            measures = [f for f in MEASURE_FAMILIES if f not in failing]
            if not measures:
                continue
        spec = make_spec(inp, n_images, batch_size, measures=measures)
        passes = passes_per_image(spec)
        per_image = sum(p["salience"] + p["forward"] for p in passes.values())
        t0 = time.perf_counter()
        result = evaluate(spec, Resolver(threads=1))
        wall = time.perf_counter() - t0
        n = result.report["dataset"]["n_images"]
        x = torch.rand(batch_size, 3, 64, 64, device=dev)
        torch.cuda.synchronize() if dev == "cuda" else None
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in range(math.ceil(n / batch_size)):
                xb = x[: min(batch_size, n - b * batch_size)]
                for _ in range(per_image):
                    net((xb - mean) / std)
        torch.cuda.synchronize() if dev == "cuda" else None
        floor = time.perf_counter() - t0
        which = "all measures" if measures is None else f"measures {measures}"
        rep.row(f"{label}: evaluation wall time", wall, "s", note=f"N={n}, batch {batch_size}, {which}")
        rep.row(f"{label}: bare batched forwards ({per_image} per image)", floor, "s")
        rep.row(f"{label}: evaluation / bare passes", wall / floor, "x", "<= 1.3", wall / floor <= 1.3)
        rep.setup[f"{label} report seconds"] = result.report["provenance"]["timing"]["seconds"]
        rep.setup[f"{label} device"] = result.report["provenance"]["device"]
        rep.setup[f"{label} passes per image"] = passes
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="toy sizes (checks the script, not the GPU)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from bench.common import machine, write_json
    from bench.run import print_reports

    thread_note = set_threads(1)
    print(f"machine: {machine()}\nthreads: {thread_note}", flush=True)
    reports = []
    for fn in (
        (lambda: figure1(2, 32, 1, _tiny(), "tinynet", "features")) if a.quick else
        (lambda: figure1(a.batch, a.size, a.reps)),
        (lambda: figure2(16)) if a.quick else (lambda: figure2(a.n)),
    ):
        t0 = time.perf_counter()
        try:
            rep = fn()
        except Exception as exc:
            rep = Report("7", "crashed")
            rep.check("figure ran", False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        rep.setup["wall_s"] = round(time.perf_counter() - t0, 1)
        print_reports([rep])
        reports.append(rep)
    code = print_reports(reports)
    if a.out:
        write_json(Path(a.out), {"machine": machine(), "reports": [r.as_dict() for r in reports]})
    return code


def _tiny():
    from bench.salience import build_tiny

    return build_tiny


if __name__ == "__main__":
    raise SystemExit(main())
