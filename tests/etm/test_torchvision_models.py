"""Acceptance: torchvision classifiers (random weights, 2 classes) exported with both ONNX exporters
and as .pt2 load, and produce salience for every method their capability table lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from etm.models.loader import load_model
from etm.salience.registry import compute_salience
from tests.helpers.tiny import META, export

# ResNet-18 is left out: ResNet-50 has the same structure (and the timm zoo covers more heads).
ARCHS = ["resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_small"]
FORMATS = ["onnx", "onnx-legacy", "pt2"]
SIZE = 64
# Small settings keep the perturbation methods quick; they do not change what is computed.
CHEAP = {
    "rise": {"n_masks": 8},
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "scorecam": {"batch": 64},  # not 512: a .pt2 program runs 512 masked copies at once slower (memory-bound)
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = {}
    d = tmp_path_factory.mktemp("tv")
    for arch in ARCHS:
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None, num_classes=2).eval()
        for fmt in FORMATS:
            ext = "pt2" if fmt == "pt2" else "onnx"
            out[(arch, fmt)] = export(net, d / f"{arch}_{fmt}.{ext}", fmt, size=SIZE, meta=META)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_listed_method_runs(exported: dict[tuple[str, str], Path], arch: str) -> None:
    x = torch.rand(2, 3, SIZE, SIZE)
    logits = {}
    for fmt in FORMATS:
        model = load_model(exported[(arch, fmt)])
        available = [m for m, c in model.capabilities.items() if c.available]
        assert "gradcam" in available and "rise" in available, model.capabilities
        logits[fmt] = model.logits(x)
        for method in available:
            # Score-CAM costs one forward pass per channel (up to 2048): one image is enough here.
            xs = x[:1] if method == "scorecam" else x
            res = compute_salience(model, xs, method, params=CHEAP.get(method))
            assert res.upsampled.shape == (len(xs), SIZE, SIZE), (arch, fmt, method)
            assert torch.isfinite(res.native).all() and (res.native >= 0).all()
            assert res.scores.shape == (len(xs),) and ((res.scores >= 0) & (res.scores <= 1)).all()
    torch.testing.assert_close(logits["onnx"], logits["pt2"], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(logits["onnx-legacy"], logits["pt2"], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v3_small"])
def test_onnx_gradcam_matches_pt2_autograd(exported: dict[tuple[str, str], Path], arch: str) -> None:
    """Linear head (ResNet-50: fast path) and non-linear head (MobileNetV3: autograd on the head)."""
    x = torch.rand(3, 3, SIZE, SIZE)
    ref = compute_salience(load_model(exported[(arch, "pt2")]), x, "gradcam").native
    for fmt in ("onnx", "onnx-legacy"):
        got = compute_salience(load_model(exported[(arch, fmt)]), x, "gradcam").native
        for i in range(3):
            if ref[i].sum() > 0:
                r = torch.corrcoef(torch.stack([got[i].flatten(), ref[i].flatten()]))[0, 1]
                assert r >= 0.9999, (arch, fmt, float(r))


@pytest.mark.parametrize("arch", ["densenet121", "resnet50"])
def test_layer_torchcam_gives_torchcam_0_3_2_default_gradcam(exported: dict[tuple[str, str], Path], arch: str) -> None:
    """The paper's maps came from TorchCAM 0.3.2's ``GradCAM(model)`` with its default layer. For DenseNet-121
    that is ``features`` (before the functional in-place ReLU, which TorchCAM's kept activation then sees);
    for ResNet-50, ``layer4``. ``layer: torchcam`` gives the same maps on every export."""
    from torchcam.methods import GradCAM

    torch.manual_seed(0)  # the fixture's weights
    net = getattr(torchvision.models, arch)(weights=None, num_classes=2).eval()
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mean, std = (torch.tensor(META[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    extractor = GradCAM(net, input_shape=(3, SIZE, SIZE))
    assert extractor.target_names == (["features"] if arch == "densenet121" else ["layer4"])
    ref = []
    for x in (images - mean) / std:  # one image at a time, as the authors' generate-cams.py
        out = net(x[None])
        ref.append(extractor(out.squeeze(0).argmax().item(), out)[0].squeeze(0).detach())
    extractor.remove_hooks()
    theirs = torch.stack(ref).flatten(1).double()
    for fmt in FORMATS:
        res = compute_salience(load_model(exported[(arch, fmt)]), images, "gradcam", "predicted", "torchcam")
        ours = res.native.flatten(1).double()
        for i in range(len(images)):
            r = torch.corrcoef(torch.stack([ours[i], theirs[i]]))[0, 1].item()
            assert r >= 0.9999, (arch, fmt, i, r)
