"""Figure 8: Grad-CAM throughput on ViT-B/16 at 224 px (timm, random weights, 2 classes).

The same rules as figure 1: every contender gets the same images, batch, target classes (ours'
predicted class) and threads, and its native map must agree with ours (Pearson r >= 0.999 per image).

- ours-onnx: one ONNX Runtime pass that also returns the last block's ``norm1`` tokens and the
  residual stream entering that block, then autograd on the 39-odd nodes after it (``onnx_subgraph``);
- ours-pt2: autograd from the same tokens through the rest of the ``.pt2`` program;
- pytorch-grad-cam ``GradCAM`` with the ``reshape_transform`` its docs give for ViT, on
  ``blocks[-1].norm1``; Captum ``LayerGradCam`` on the same layer (through a grid view of it, since
  Captum expects ``[N, K, h, w]``): both forward and backward through the whole eager network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.common import IMAGENET_META, Report, best, check_maps, export_cached, have, interleaved, set_threads

PEARSON_MIN = 0.999


def build_vit_b16(size: int = 224, tiny: bool = False) -> torch.nn.Module:
    """ViT-B/16, or with ``tiny`` the zoo's two-block ViT (patch 8, 32 px) for toy-size runs."""
    import timm

    if tiny:
        from tests.helpers.zoo import build

        return build("vit")
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=2, img_size=size).eval()


def _anchors(size: int, targets: list[int], tiny: bool) -> dict[str, Any]:
    from bench.salience import Normalized
    from tests.helpers.zoo import grid_layer

    mean, std = IMAGENET_META["mean"], IMAGENET_META["std"]
    side = size // (8 if tiny else 16)

    def transform(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's docs, for ViT
        return t[:, 1:, :].reshape(t.size(0), side, side, t.size(2)).transpose(2, 3).transpose(1, 2)

    out: dict[str, Any] = {}
    if have("pytorch_grad_cam"):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        m1 = Normalized(build_vit_b16(size, tiny), mean, std).eval()
        layer = m1.net.blocks[-1].norm1
        cam = GradCAM(model=m1, target_layers=[layer], reshape_transform=transform)
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def pgc(x: torch.Tensor) -> np.ndarray:
            cam(input_tensor=x, targets=pgc_targets)
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            return np.maximum(cam.get_cam_image(x, layer, pgc_targets, acts, grads), 0)

        out["pytorch-grad-cam"] = pgc
    if have("captum"):
        from captum.attr import LayerGradCam

        m2 = Normalized(build_vit_b16(size, tiny), mean, std).eval()
        lgc = LayerGradCam(m2, grid_layer(m2.net, m2.net.blocks[-1].norm1, transform))
        tgt = torch.tensor(targets)

        def captum(x: torch.Tensor) -> np.ndarray:
            return lgc.attribute(x, target=tgt, relu_attributions=True)[:, 0].detach().cpu().numpy()

        out["captum"] = captum
    return out


def run(batch: int = 8, size: int = 224, reps: int = 3, threads: int = 1, tiny: bool = False) -> Report:
    from etm.models.loader import load_model
    from etm.salience.registry import compute_salience

    thread_note = set_threads(threads)
    rep = Report("8", f"Grad-CAM throughput, {'tiny ViT' if tiny else 'ViT-B/16'} at {size} px, batch {batch}, CPU")
    meta = dict(IMAGENET_META)
    name = f"vit-{'tiny' if tiny else 'b16'}-{size}"
    ours = load_model(export_cached(name, lambda: build_vit_b16(size, tiny), "onnx", size, meta), threads=threads)
    pt2 = load_model(export_cached(name, lambda: build_vit_b16(size, tiny), "pt2", size, meta), device="cpu")
    rep.check("head-only autograd path", "autograd on the" in ours.capabilities["gradcam"].reason,
              ours.capabilities["gradcam"].reason)
    torch.manual_seed(1)
    images = torch.rand(batch, 3, size, size)
    res = compute_salience(ours, images, "gradcam")
    targets = res.targets.tolist()
    fns: dict[str, Any] = {
        "ours-onnx": lambda: compute_salience(ours, images, "gradcam"),
        "ours-pt2-autograd": lambda: compute_salience(pt2, images, "gradcam"),
    }
    anchor_fns = _anchors(size, targets, tiny)
    for key, fn in anchor_fns.items():
        fns[key] = (lambda f: lambda: f(images))(fn)
    ours_native = res.native.numpy()
    theirs = {"pt2": compute_salience(pt2, images, "gradcam").native.numpy()}
    check_maps(rep, ours_native, theirs | {k: f(images) for k, f in anchor_fns.items()}, PEARSON_MIN)
    times = interleaved(fns, reps=reps, warmup=1)
    rep.timings = times
    t = {k: best(v) for k, v in times.items()}
    rep.setup = {"batch": batch, "size": size, "reps": reps, "threads": thread_note, "timing": "best of reps",
                 "model": f"timm {'zoo ViT' if tiny else 'vit_base_patch16_224'}, random weights (seed 0), 2 classes",
                 "layer": "blocks[-1].norm1 (layer: auto)", "targets": "ours' predicted class, for every anchor"}
    for k, v in t.items():
        rep.row(f"{k}: images/s", batch / v, "img/s", note=f"{v:.3f} s per batch")
    if anchor_fns:
        fastest = min(anchor_fns, key=lambda k: t[k])
        ratio = t[fastest] / t["ours-onnx"]
        rep.row(f"ours-onnx vs fastest anchor ({fastest})", ratio, "x", ">= 1.5", ratio >= 1.5)
        rep.row(f"ours-pt2-autograd vs fastest anchor ({fastest})", t[fastest] / t["ours-pt2-autograd"], "x",
                "(report)")
    else:
        rep.skipped.append("anchors not installed (bench extra): pytorch-grad-cam, captum")
    return rep
