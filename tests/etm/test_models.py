"""Model loading: formats, metadata, capability tables, refusals, and the Grad-CAM fast path."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from etm.errors import MethodUnavailable, ModelRefused
from etm.models.loader import load_model
from etm.salience.registry import compute_salience
from tests.helpers.tiny import META, TinyNet, export


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("exports")
    torch.manual_seed(3)
    net = TinyNet()
    return {
        fmt: export(net, d / f"tiny_{fmt}.{'pt2' if fmt == 'pt2' else 'onnx'}", fmt)
        for fmt in ("onnx", "onnx-legacy", "pt2")
    }


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def test_all_formats_load_with_sidecar_metadata(exports: dict[str, Path]) -> None:
    for fmt, path in exports.items():
        m = load_model(path)
        assert m.format == ("pt2" if fmt == "pt2" else "onnx")
        assert m.metadata.class_names == META["class_names"]
        assert m.metadata.positive_class == "synthetic"
        assert tuple(m.metadata.input_size) == (32, 32)
        x = torch.rand(5, 3, 32, 32)
        assert m.logits(x).shape == (5, 2)


def test_formats_agree_on_logits(exports: dict[str, Path]) -> None:
    x = torch.rand(4, 3, 32, 32)
    ref = load_model(exports["pt2"]).logits(x)
    for fmt in ("onnx", "onnx-legacy"):
        torch.testing.assert_close(load_model(exports[fmt]).logits(x), ref, atol=1e-5, rtol=1e-5)


def test_metadata_from_onnx_metadata_props(tmp_path: Path, exports: dict[str, Path]) -> None:
    proto = onnx.load(str(exports["onnx"]))
    meta = dict(META, class_names=["cat", "dog"], positive_class="dog", input_size=[32, 32])
    entry = proto.metadata_props.add()
    entry.key, entry.value = "etm", json.dumps(meta)
    path = tmp_path / "with_props.onnx"
    onnx.save(proto, str(path))
    m = load_model(path)
    assert m.metadata.class_names == ["cat", "dog"] and m.metadata.positive_class == "dog"


def test_defaults_without_metadata(tmp_path: Path, exports: dict[str, Path]) -> None:
    path = tmp_path / "bare.onnx"
    path.write_bytes(exports["onnx"].read_bytes())
    m = load_model(path)
    assert m.metadata.class_names == ["class_0", "class_1"]
    assert m.metadata.positive_class == "class_1"
    assert m.metadata.score_activation == "softmax"
    assert tuple(m.metadata.input_size) == (32, 32)  # read from the graph's fixed spatial size


def test_capability_table_says_why(exports: dict[str, Path]) -> None:
    onnx_caps = load_model(exports["onnx"]).capabilities
    assert onnx_caps["gradcam"].available and "fast path" in onnx_caps["gradcam"].reason
    assert not onnx_caps["integrated_gradients"].available
    assert "unavailable for an ONNX graph" in onnx_caps["integrated_gradients"].reason
    pt2_caps = load_model(exports["pt2"]).capabilities
    attention = {"rollout", "gradient_rollout"}  # a CNN has no attention: refused, with the reason
    assert all(c.available for m, c in pt2_caps.items() if m not in attention)
    assert all(not pt2_caps[m].available and "no attention layers" in pt2_caps[m].reason for m in attention)


def test_unavailable_method_is_refused_not_substituted(exports: dict[str, Path]) -> None:
    m = load_model(exports["onnx"])
    with pytest.raises(MethodUnavailable, match="integrated_gradients: needs input gradients"):
        compute_salience(m, torch.rand(2, 3, 32, 32), "integrated_gradients")


@pytest.mark.parametrize("fmt", ["onnx", "onnx-legacy"])
@pytest.mark.parametrize("method", ["gradcam", "cam", "gradcam++"])
def test_fast_path_equals_autograd(exports: dict[str, Path], fmt: str, method: str) -> None:
    """One forward pass + head weights (ONNX) == autograd through the network (.pt2), same weights."""
    x = torch.rand(6, 3, 32, 32)
    fast = compute_salience(load_model(exports[fmt]), x, method)
    ref = compute_salience(load_model(exports["pt2"]), x, method)
    assert fast.native.shape == ref.native.shape == (6, 8, 8)
    for i in range(6):
        if ref.native[i].sum() > 0:
            assert _pearson(fast.native[i], ref.native[i]) >= 0.9999
    torch.testing.assert_close(fast.native, ref.native, atol=1e-5, rtol=1e-4)


def test_gradcam_equals_cam_up_to_positive_factor(exports: dict[str, Path]) -> None:
    m = load_model(exports["onnx"])
    x = torch.rand(4, 3, 32, 32)
    g, c = compute_salience(m, x, "gradcam").native, compute_salience(m, x, "cam").native
    torch.testing.assert_close(g * 64, c, atol=1e-5, rtol=1e-4)  # factor 1 / (h * w)


def test_fixed_target_and_named_layer(exports: dict[str, Path]) -> None:
    m = load_model(exports["pt2"])
    x = torch.rand(3, 3, 32, 32)
    res = compute_salience(m, x, "gradcam", target="real")
    assert res.targets.tolist() == [0, 0, 0]
    layer = m.resolve_layer("auto")
    named = compute_salience(m, x, "gradcam", layer=layer)
    torch.testing.assert_close(named.native, compute_salience(m, x, "gradcam").native)


# -- refusals ------------------------------------------------------------------------------------


def _refused(path: Path, match: str) -> None:
    with pytest.raises(ModelRefused, match=match):
        load_model(path)


def test_refuses_pickle(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    _refused(p, "is a Python pickle; pickles can run arbitrary code")


def test_refuses_torch_save_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    torch.save(TinyNet().state_dict(), p)
    _refused(p, "is a torch.save checkpoint")


def test_refuses_torchscript(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 32, 32)).save(str(p))
    _refused(p, "is a TorchScript archive; TorchScript has no safe loading mode")


def test_refuses_onnx_failing_checker(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["missing"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "bad",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    p = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph), str(p))
    _refused(p, "fails onnx.checker")


def test_refuses_external_data(tmp_path: Path, exports: dict[str, Path]) -> None:
    proto = onnx.load(str(exports["onnx-legacy"]))
    p = tmp_path / "ext.onnx"
    onnx.save_model(
        proto, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0
    )
    _refused(p, "references external data")


class _Vec(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] * 2


class _TwoIn(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + y).mean(dim=(2, 3))[:, :2]


class _MapOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _legacy(module: torch.nn.Module, args: tuple, path: Path) -> Path:
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17)
    return path


def test_refuses_non_image_input(tmp_path: Path) -> None:
    _refused(_legacy(_Vec(), (torch.rand(2, 5),), tmp_path / "vec.onnx"), "has rank 2; an image tensor")


def test_refuses_two_inputs(tmp_path: Path) -> None:
    p = _legacy(_TwoIn(), (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)), tmp_path / "two.onnx")
    _refused(p, "must take one image tensor, it takes 2 inputs")


def test_refuses_non_class_output(tmp_path: Path) -> None:
    p = _legacy(_MapOut(), (torch.rand(1, 3, 8, 8),), tmp_path / "map.onnx")
    _refused(p, "output '.*' has rank 4; one \\[N, C\\] tensor")


def test_refuses_pt2_with_pickled_weights(tmp_path: Path, exports: dict[str, Path]) -> None:
    src = zipfile.ZipFile(exports["pt2"])
    p = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(p, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            dst.writestr(info, data)
    _refused(p, "as a pickled object; only raw tensors are accepted")


def test_refuses_garbage_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\x01garbage" * 10)
    _refused(p, "neither an ONNX model nor a .pt2 program|not an ONNX model|fails onnx.checker")
    e = tmp_path / "empty.onnx"
    e.write_bytes(b"")
    _refused(e, "is empty")


def test_bad_sidecar_metadata_is_refused(tmp_path: Path, exports: dict[str, Path]) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(exports["onnx"].read_bytes())
    (tmp_path / "m.onnx.json").write_text(json.dumps({"positive_class": "dog", "class_names": ["a", "b"]}))
    _refused(p, "positive_class 'dog' is not one of class_names")


def test_ssim_and_histogram_entropy_equal_skimage_on_real_maps(exports: dict[str, Path]) -> None:
    """The batched SSIM / entropy kernels on Grad-CAM maps of a real model, against scikit-image per map."""
    from skimage.measure import shannon_entropy
    from skimage.metrics import structural_similarity

    from etm.measures.entropy import histogram_entropy
    from etm.ops.maps import to_uint8
    from etm.ops.ssim import ssim

    g = torch.Generator().manual_seed(11)
    x = torch.rand(16, 3, 32, 32, generator=g)
    a = compute_salience(load_model(exports["onnx"]), x, "gradcam")
    b = compute_salience(load_model(exports["onnx"]), torch.flip(x, dims=[3]), "gradcam")
    a8, b8 = to_uint8(a.native), to_uint8(b.native)
    ours = ssim(a8, b8, 255.0).numpy()
    ref = [structural_similarity(a8[i].numpy(), b8[i].numpy(), data_range=255) for i in range(16)]
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    up_a = a.upsampled - a.upsampled.amin((1, 2), keepdim=True)
    up_a = up_a / up_a.amax((1, 2), keepdim=True).clamp_min(1e-12)
    up_b = b.upsampled - b.upsampled.amin((1, 2), keepdim=True)
    up_b = up_b / up_b.amax((1, 2), keepdim=True).clamp_min(1e-12)
    ours_f = ssim(up_a, up_b, 1.0).numpy()
    ref_f = [
        structural_similarity(up_a[i].double().numpy(), up_b[i].double().numpy(), data_range=1.0) for i in range(16)
    ]
    np.testing.assert_allclose(ours_f, ref_f, atol=1e-4)
    ent = histogram_entropy(a8).numpy()
    ref_e = [shannon_entropy(a8[i].numpy()) / np.log2(64) for i in range(16)]
    np.testing.assert_allclose(ent, ref_e, atol=1e-6)
