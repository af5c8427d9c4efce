"""The sanity checks give Quantus 0.6's numbers: on the same model, images, Grad-CAM maps and randomisation seed,
``quantus.MPRT`` (cascading and independent), ``quantus.EfficientMPRT`` and ``quantus.RandomLogit`` agree with the
service's ``sanity.*`` per image to 1e-5. The service loads the model's ``.pt2`` export; Quantus gets the eager
module it was exported from and an ``explain_func`` that computes the same Grad-CAM (input-size map).

Convention mapping (tested here): Quantus normalises a batch of maps by the batch's largest value; the service
divides each map by its own for SSIM (RandomLogit), which is Quantus called one image at a time, and not at all
for Spearman's rank correlation (MPRT), which is Quantus with ``normalise=False``: the scale changes no rank in
exact arithmetic, but a float32 division can round distinct values into ties (with Quantus's default
``normalise=True`` the values still agree to 1e-4, tested too).

Also: the ONNX runtime randomises initializers to the same maps as the ``.pt2`` runtime randomises parameters,
layer for layer, on a model without BatchNorm (exporters fold BatchNorm into the convolutions, so an ONNX
graph of a model with BatchNorm has fewer layers: its conv layers then hold the folded weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from etm.evaluation import evaluate
from etm.models.loader import load_model
from etm.models.randomization import layer_names, randomized
from etm.salience.registry import compute_salience
from etm.spec import EvaluationSpec
from tests.helpers.tiny import META, export, tiny_dataset, tiny_family

quantus = pytest.importorskip("quantus")
pytestmark = pytest.mark.timeout(300)
SIZE = 32


class SanityNet(torch.nn.Module):
    """Normalise -> conv+BN+ReLU+pool -> conv+ReLU (the Grad-CAM layer) -> GAP -> linear. Conv, BN and linear
    layers: what Quantus's ``get_random_layer_generator`` resets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        return torch.relu(self.conv2(x))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def gradcam_explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
    """Quantus's explain_func: Grad-CAM at the last ReLU, bilinearly upsampled to the input: [N, 1, H, W]."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    with torch.enable_grad():
        a = model.features(x).detach().requires_grad_(True)
        logits = model.head(a)
        sel = logits.gather(1, torch.as_tensor(np.asarray(targets), dtype=torch.long).view(-1, 1)).sum()
        (g,) = torch.autograd.grad(sel, a)
    cam = torch.relu(torch.einsum("nk,nkhw->nhw", g.mean(dim=(2, 3)), a.detach()))
    up = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up.detach().numpy().astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("quantus-sanity")
    torch.manual_seed(3)
    net = SanityNet().eval()
    with torch.no_grad():  # BN statistics that are not the reset values, so resetting them matters
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
        net.bn1.bias.uniform_(-0.2, 0.2)
    meta = {**META, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # the net normalises itself
    path = export(net, root / "net.pt2", "pt2", size=SIZE, meta=meta)
    data = tiny_dataset(root / "data", n_per_class=5, size=SIZE, masks=False)
    spec = EvaluationSpec(
        candidates=[{"name": "c", "models": [str(path)]}], dataset=str(data), measures=["sanity"],
        measure_params={"sanity": {"independent": 1}}, batch_size=4, bootstrap_resamples=100,
    )
    res = evaluate(spec)
    x = np.stack([np.asarray(Image.open(data / k).convert("RGB"), dtype=np.float32) / 255 for k in res.keys])
    x = x.transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(dim=1).numpy()
    return {"net": net, "x": x, "y": y, "cols": res.columns["c"]["sanity"], "res": res, "path": path}


def _kw() -> dict[str, Any]:
    return {"disable_warnings": True, "display_progressbar": False}


def test_mprt_cascading_matches_quantus_per_layer(setup: dict[str, Any]) -> None:
    cols = setup["cols"]
    names = [str(n) for n in cols["layer_names"][0]]
    assert names == ["fc", "conv2", "bn1", "conv1"]  # Quantus's module names, output layer first
    metric = quantus.MPRT(layer_order="top_down", seed=42, normalise=False, **_kw())
    got = metric(model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=None,
                 explain_func=gradcam_explain, device="cpu", batch_size=len(setup["x"]))
    assert list(got) == ["original", *names]
    for i, layer in enumerate(["original", *names]):
        np.testing.assert_allclose(cols["mprt"][:, 0, i], np.asarray(got[layer]), atol=1e-5, err_msg=layer)
    last = quantus.MPRT(layer_order="top_down", seed=42, return_last_correlation=True, normalise=False, **_kw())(
        model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=None,
        explain_func=gradcam_explain, device="cpu", batch_size=len(setup["x"]))
    np.testing.assert_allclose(cols["mprt_last"][:, 0], np.asarray(last), atol=1e-5)
    mprt = next(m for m in setup["res"].report["candidates"][0]["measures"].values() if m["name"] == "sanity.mprt")
    assert mprt["value"] == pytest.approx(float(np.mean(last)), abs=1e-5)
    assert [p["layer"] for p in mprt["details"]["curves"]["mprt"]] == ["original", *names]
    default = quantus.MPRT(layer_order="top_down", seed=42, return_last_correlation=True, **_kw())(
        model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=None,
        explain_func=gradcam_explain, device="cpu", batch_size=len(setup["x"]))
    np.testing.assert_allclose(cols["mprt_last"][:, 0], np.asarray(default), atol=1e-4)


def test_mprt_independent_matches_quantus(setup: dict[str, Any]) -> None:
    cols = setup["cols"]
    names = [str(n) for n in cols["layer_names"][0]]
    got = quantus.MPRT(layer_order="independent", seed=42, normalise=False, **_kw())(
        model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=None,
        explain_func=gradcam_explain, device="cpu", batch_size=len(setup["x"]))
    for j, layer in enumerate(names):
        np.testing.assert_allclose(cols["mprt_independent"][:, 0, j], np.asarray(got[layer]), atol=1e-5, err_msg=layer)


def test_efficient_mprt_matches_quantus(setup: dict[str, Any]) -> None:
    got = quantus.EfficientMPRT(seed=42, **_kw())(
        model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=None,
        explain_func=gradcam_explain, device="cpu", batch_size=len(setup["x"]))
    np.testing.assert_allclose(setup["cols"]["emprt"][:, 0], np.asarray(got), atol=1e-5)


def test_random_logit_matches_quantus_one_image_at_a_time(setup: dict[str, Any]) -> None:
    x, y = setup["x"], setup["y"]
    ours = setup["cols"]["random_logit"][:, 0]
    for i in range(len(x)):
        got = quantus.RandomLogit(num_classes=2, seed=42, **_kw())(
            model=setup["net"], x_batch=x[i : i + 1], y_batch=y[i : i + 1], a_batch=None,
            explain_func=gradcam_explain, device="cpu", batch_size=1)
        assert ours[i] == pytest.approx(float(got[0]), abs=1e-5), i


def test_randomised_copy_leaves_the_model_alone(setup: dict[str, Any]) -> None:
    model = load_model(setup["path"])
    x = torch.from_numpy(setup["x"][:4])
    before = model.logits(x)
    rnd = randomized(model, layer_names(model), 42)
    assert not torch.allclose(rnd.logits(x), before)
    assert torch.equal(model.logits(x), before)
    again = randomized(model, layer_names(model), 42)
    assert torch.equal(again.logits(x), rnd.logits(x))  # seeded


def test_onnx_randomisation_gives_the_pt2_maps(tmp_path: Path) -> None:
    """Same TinyNet (no BatchNorm) as .pt2 and ONNX: the same layers, and after each cascading step the same
    logits and Grad-CAM maps."""
    pt2 = load_model(tiny_family(tmp_path / "pt2", k=1, fmt="pt2")[0])
    onnx = load_model(tiny_family(tmp_path / "onnx", k=1, fmt="onnx")[0])
    names = layer_names(pt2)
    assert names == layer_names(onnx) == ["features.0", "features.2", "fc"]
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    top_down = names[::-1]
    for step in range(1, len(names) + 1):
        a, b = randomized(pt2, top_down[:step], 42), randomized(onnx, top_down[:step], 42)
        torch.testing.assert_close(a.logits(x), b.logits(x), atol=1e-5, rtol=1e-4)
        ma = compute_salience(a, x, "gradcam", target=1).upsampled
        mb = compute_salience(b, x, "gradcam", target=1).upsampled
        torch.testing.assert_close(ma, mb, atol=1e-5, rtol=1e-4)


def test_benchmark_onnx_has_bn_folded(tmp_path: Path) -> None:
    """Why the benchmark's .pt2 and ONNX differ: the exporter folds BatchNorm into the convolutions."""
    from benchdata.paths import family_files

    pt2, onnx = (load_model(family_files("xent", fmt)[0]) for fmt in ("pt2", "onnx"))
    assert [n for n in layer_names(pt2) if n in layer_names(onnx)] == layer_names(onnx)
    assert len(layer_names(pt2)) == 9 and len(layer_names(onnx)) == 5
    assert json.loads(Path(str(family_files("xent", "pt2")[0]) + ".json").read_text())["input_size"] == [64, 64]


def test_onnx_and_pt2_jobs_give_the_same_sanity_numbers(tmp_path: Path, dataset_dir: Path) -> None:
    """The whole measure through the evaluation on the ONNX and the .pt2 export of one TinyNet (Grad-CAM: the
    ONNX head gradient from the randomised graph's initializers, the .pt2 autograd through its parameters)."""
    paths = {fmt: tiny_family(tmp_path / fmt, k=1, fmt=fmt)[0] for fmt in ("pt2", "onnx")}
    cols = {}
    for fmt, path in paths.items():
        spec = EvaluationSpec(candidates=[{"name": "c", "models": [str(path)]}], dataset=str(dataset_dir),
                              measures=["sanity"], max_images=8, bootstrap_resamples=100,
                              measure_params={"sanity": {"independent": 1}})
        cols[fmt] = evaluate(spec).columns["c"]["sanity"]
    for key in ("mprt", "mprt_independent", "random_logit"):
        np.testing.assert_allclose(cols["onnx"][key], cols["pt2"][key], atol=1e-4, err_msg=key)
    assert (cols["onnx"]["layer_names"] == cols["pt2"]["layer_names"]).all()
