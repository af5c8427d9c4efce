"""The committed benchmark families and the training recipe they come from."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from benchdata import faces, paths
from benchdata.data import Split
from benchdata.net import FaceNet, normalise
from benchdata.train import RECIPES, cyborg_loss, mask_targets, train_run
from etm.models.metadata import ModelMetadata

MANIFEST = json.loads(paths.MODELS_MANIFEST.read_text()) if paths.MODELS_MANIFEST.exists() else None
needs_models = pytest.mark.skipif(MANIFEST is None, reason="benchmark models not trained")


def _tiny_split(n: int = 48) -> Split:
    r = faces.render_faces([9, 0], n, 64, faces.SEEN_GENERATORS, 0.9, 0.1)
    return Split(torch.from_numpy(r.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(r.masks),
                 torch.from_numpy(r.labels), [str(i) for i in range(n)], r.generators,
                 torch.from_numpy(r.shortcut))


@needs_models
def test_manifest_hashes_match_files() -> None:
    assert MANIFEST is not None
    for recipe in paths.RECIPES:
        runs = MANIFEST["recipes"][recipe]["runs"]
        assert [r["run"] for r in runs] == list(range(paths.N_RUNS))
        for run in runs:
            for rel, sha in run["files"].items():
                path = paths.MODELS_DIR / rel
                assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, rel
                assert path.stat().st_size < 400_000, f"{rel} is too large to commit"


@needs_models
@pytest.mark.parametrize("recipe", paths.RECIPES)
def test_exports_agree_and_carry_metadata(recipe: str) -> None:
    import onnx
    import onnxruntime as ort

    x = normalise(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for onnx_path, pt2_path in zip(paths.family_files(recipe, "onnx"), paths.family_files(recipe, "pt2"),
                                   strict=True):
        for p in (onnx_path, pt2_path):
            meta = ModelMetadata.from_json_text(p.with_name(p.name + ".json").read_text(), str(p))
            assert meta.input_size == (64, 64)
            assert meta.class_names == ["real", "synthetic"] and meta.positive_class == "synthetic"
        model = onnx.load(str(onnx_path))
        assert model.opset_import[0].version == 18
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["etm"]) == json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]  # batch of 3: dynamic batch
        with torch.no_grad():
            ref = torch.export.load(pt2_path).module()(x).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_cam_is_consistent_with_the_head() -> None:
    torch.manual_seed(0)
    net = FaceNet().eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape[-2:] == (8, 8)
        logits = net(x)
        for c in range(2):
            cam = net.cam(feats, torch.full((4,), c))
            # GAP + linear: the logit is the CAM's mean plus the bias
            torch.testing.assert_close(cam.mean((1, 2)) + net.fc.bias[c], logits[:, c])


def test_mask_targets_average_area() -> None:
    m = torch.zeros(1, 64, 64, dtype=torch.uint8)
    m[0, :8, :4] = 255  # half of the top-left 8x8 cell
    t = mask_targets(m, (8, 8))
    assert t.shape == (1, 8, 8)
    assert float(t[0, 0, 0]) == pytest.approx(0.5)
    assert float(t.sum()) == pytest.approx(0.5)


def test_cyborg_loss_is_zero_for_a_cam_equal_to_the_mask() -> None:
    net = FaceNet().eval()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    with torch.no_grad():
        feats = net.forward_features(x)
        mask = net.cam(feats, y) * 3 + 1  # same shape up to an affine map: min-max removes it
        _, _, sal = cyborg_loss(net, x, y, mask, alpha=0.5)
    assert float(sal) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("recipe", ["xent", "cyborg"])
def test_training_is_deterministic(recipe: str) -> None:
    data = _tiny_split()
    r = dataclasses.replace(RECIPES[recipe], epochs=1, batch_size=16)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    a = train_run(r, 7, data, log=False).state_dict()
    # the global torch settings the recipe needs do not leak into the caller
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
    b = train_run(r, 7, data, log=False).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train_run(r, 8, data, log=False).state_dict()
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
