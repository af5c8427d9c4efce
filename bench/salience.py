"""Figure 1: Grad-CAM throughput on ResNet-50 (random weights, 2 classes).

Ours on the ONNX export (the fast path: one ONNX Runtime forward pass that also returns the target
activation, plus the head's weight row) against the eager-PyTorch anchors (TorchCAM ``GradCAM``,
Captum ``LayerGradCam``, pytorch-grad-cam ``GradCAM``: forward + backward through the network)
and against a bare ONNX Runtime forward pass of the same file (the floor: nothing can be faster
than the forward pass it needs). The ``.pt2`` autograd path is reported too.

All contenders get the same images, batch, target classes (ours' predicted class) and threads.
Correctness: per image, the Pearson r of our native map and each anchor's native map (pytorch-grad-
cam's before its upsampling and min-max scaling) must be >= 0.999.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch

from bench.common import (
    IMAGENET_META,
    Report,
    best,
    check_maps,
    export_cached,
    have,
    interleaved,
    ort_session,
    pearson_rows,
    set_threads,
)

PEARSON_MIN = 0.999
ANCHORS = ("pytorch-grad-cam", "torchcam", "captum")


def build_resnet50(num_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None, num_classes=num_classes).eval()


def build_tiny() -> torch.nn.Module:
    """The tests' TinyNet (GAP + linear head, 8x8 maps at 32 px): for toy-size runs."""
    from tests.helpers.tiny import TinyNet

    torch.manual_seed(0)
    return TinyNet().eval()


class Normalized(torch.nn.Module):
    """The eager model as the anchors see it: RGB in [0, 1] -> the network's normalisation -> net."""

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _anchors(net: torch.nn.Module, layer_name: str, targets: list[int], device: str = "cpu") -> dict[str, Any]:
    """One callable per installed anchor, each on its own copy of the model (their hooks stay
    registered between calls and must not slow the others). Each returns native maps [N, h, w]."""
    mean, std = IMAGENET_META["mean"], IMAGENET_META["std"]
    out: dict[str, Any] = {}
    tgt = torch.tensor(targets, device=device)

    if have("pytorch_grad_cam"):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        m1 = Normalized(copy.deepcopy(net), mean, std).to(device).eval()
        layer = dict(m1.net.named_modules())[layer_name]
        cam = GradCAM(model=m1, target_layers=[layer])
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def pgc(x: torch.Tensor) -> np.ndarray:
            cam(input_tensor=x, targets=pgc_targets)  # upsampled, min-max scaled maps (its product)
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            # its own native map: get_cam_image + ReLU, before scale_cam_image
            native = cam.get_cam_image(x, layer, pgc_targets, acts, grads)
            return np.maximum(native, 0)

        out["pytorch-grad-cam"] = pgc

    if have("torchcam"):
        from torchcam.methods import GradCAM as TorchCamGradCAM

        m2 = Normalized(copy.deepcopy(net), mean, std).to(device).eval()
        extractor = TorchCamGradCAM(m2, target_layer=f"net.{layer_name}")

        def tcam(x: torch.Tensor) -> np.ndarray:
            scores = m2(x)
            maps = extractor(class_idx=list(targets), scores=scores)[0]  # min-max normalised per map
            return maps.detach().cpu().numpy()

        out["torchcam"] = tcam

    if have("captum"):
        from captum.attr import LayerGradCam

        m3 = Normalized(copy.deepcopy(net), mean, std).to(device).eval()
        lgc = LayerGradCam(m3, dict(m3.net.named_modules())[layer_name])

        def captum(x: torch.Tensor) -> np.ndarray:
            return lgc.attribute(x, target=tgt, relu_attributions=True)[:, 0].detach().cpu().numpy()

        out["captum"] = captum
    return out


def run(batch: int = 16, size: int = 224, reps: int = 3, threads: int = 1, layer_name: str = "layer4",
        pt2: bool = True, anchors: bool = True, build=build_resnet50, model_name: str = "resnet50") -> Report:
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

    thread_note = set_threads(threads)
    rep = Report("1", f"Grad-CAM throughput, {model_name} at {size} px, batch {batch}, CPU")
    meta = dict(IMAGENET_META)
    onnx_path = export_cached(f"{model_name}-{size}", build, "onnx", size, meta)
    ours = load_model(onnx_path, threads=threads)
    if ours.capabilities["gradcam"].reason.find("fast path") < 0:
        rep.check("fast path available", False, ours.capabilities["gradcam"].reason)
    net = build()
    torch.manual_seed(1)
    images = torch.rand(batch, 3, size, size)
    x_norm = ours.preprocess(images).numpy()
    sess = ort_session(onnx_path, threads)
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    res = compute_salience(ours, images, "gradcam")
    targets = res.targets.tolist()
    with torch.no_grad():
        eager_logits = Normalized(net, meta["mean"], meta["std"])(images)
    diff = float((eager_logits - res.logits).abs().max() / eager_logits.abs().max().clamp_min(1e-6))
    rep.check("ONNX export = eager model (logits)", diff < 1e-3, f"max |diff| / max |logit| = {diff:.2e}")

    fns: dict[str, Any] = {
        "ours-onnx": lambda: compute_salience(ours, images, "gradcam"),
        "bare-ort-forward": lambda: sess.run([out_name], {in_name: x_norm}),
    }
    pt2_model = None
    if pt2:
        pt2_path = export_cached(f"{model_name}-{size}", build, "pt2", size, meta)
        pt2_model = load_model(pt2_path, device="cpu")
        fns["ours-pt2-autograd"] = lambda: compute_salience(pt2_model, images, "gradcam")
        eager_net = Normalized(net, meta["mean"], meta["std"]).eval()

        def bare_torch():
            with torch.no_grad():
                return eager_net(images)

        fns["bare torch forward"] = bare_torch
    anchor_fns = _anchors(net, layer_name, targets) if anchors else {}
    missing = [a for a in ANCHORS if a not in anchor_fns]
    if missing:
        rep.skipped.append(f"anchors not installed (bench extra): {', '.join(missing)}")
    for name, fn in anchor_fns.items():
        fns[name] = (lambda f: lambda: f(images))(fn)

    # Correctness first (untimed): every anchor's native map against ours.
    ours_native = res.native.numpy()
    check_maps(rep, ours_native, {name: fn(images) for name, fn in anchor_fns.items()}, PEARSON_MIN)
    if pt2_model is not None:
        r = pearson_rows(ours_native, compute_salience(pt2_model, images, "gradcam").native.numpy())
        rep.check("native maps ONNX fast path vs .pt2 autograd", bool(np.all(r >= PEARSON_MIN)),
                  f"min Pearson r = {float(np.nanmin(r)):.6f}")

    times = interleaved(fns, reps=reps, warmup=1)
    rep.timings = times
    t = {k: best(v) for k, v in times.items()}
    rep.setup = {"batch": batch, "size": size, "reps": reps, "threads": thread_note, "timing": "best of reps",
                 "model": f"torchvision {model_name}, random weights (seed 0), 2 classes",
                 "targets": "ours' predicted class, passed to every anchor"}
    for k, v in t.items():
        rep.row(f"{k}: images/s", batch / v, "img/s", note=f"{v:.3f} s per batch")
    if anchor_fns:
        fastest = min(anchor_fns, key=lambda k: t[k])
        ratio = t[fastest] / t["ours-onnx"]
        rep.row(f"ours-onnx vs fastest anchor ({fastest})", ratio, "x", ">= 1.5", ratio >= 1.5)
        if pt2_model is not None:
            r2 = t[fastest] / t["ours-pt2-autograd"]
            rep.row(f"ours-pt2-autograd vs fastest anchor ({fastest})", r2, "x", "(report)")
    if pt2_model is not None:
        rep.row("ours-pt2-autograd vs bare torch forward (its floor)", t["bare torch forward"] / t["ours-pt2-autograd"],
                "x", "(report)")
    floor = t["bare-ort-forward"] / t["ours-onnx"]
    rep.row("ours-onnx vs bare ORT forward (floor)", floor, "x", ">= 0.9", floor >= 0.9)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    rep = run(a.batch, a.size, a.reps, a.threads)
    from bench.run import print_reports

    return print_reports([rep])


if __name__ == "__main__":
    raise SystemExit(main())
