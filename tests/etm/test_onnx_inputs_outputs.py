"""Other frameworks' ONNX conventions: a channels-last image input (Keras through tf2onnx), several graph
outputs (the scores picked by name), and what the loader says when neither is declared right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from etm.errors import ModelRefused
from etm.models.loader import load_model
from etm.salience.registry import compute_salience
from tests.helpers.tiny import META, TinyNet, export


class _ChannelsLast(torch.nn.Module):
    """TinyNet behind a [N, H, W, 3] input, as a Keras model converted by tf2onnx takes its images."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


class _TwoOutputs(torch.nn.Module):
    def __init__(self, net: TinyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x).mean(dim=(2, 3))
        return features, self.net.fc(features)


def _legacy(module: torch.nn.Module, path: Path, example: torch.Tensor, outputs: list[str]) -> Path:
    torch.onnx.export(
        module.eval(), (example,), str(path), dynamo=False, input_names=["images"], output_names=outputs,
        dynamic_axes={"images": {0: "n"}, **{o: {0: "n"} for o in outputs}}, opset_version=17,
    )
    return path


def test_channels_last_input_is_detected_and_scores_like_the_channels_first_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    nchw = load_model(export(net, tmp_path / "nchw.onnx", "onnx-legacy"))
    path = _legacy(_ChannelsLast(net), tmp_path / "nhwc.onnx", torch.rand(2, 32, 32, 3), ["logits"])
    path.with_name(path.name + ".json").write_text(json.dumps({k: v for k, v in META.items() if k != "input_size"}))
    nhwc = load_model(path)
    assert nhwc.nhwc_input and nhwc.metadata.input_layout is None and tuple(nhwc.metadata.input_size) == (32, 32)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(nhwc.logits(x), nchw.logits(x), atol=1e-5, rtol=1e-4)
    ours, ref = (compute_salience(m, x, "gradcam").native for m in (nhwc, nchw))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-4)


def test_several_outputs_need_the_scores_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    path = _legacy(_TwoOutputs(net), tmp_path / "two.onnx", torch.rand(2, 3, 32, 32), ["features", "scores"])
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps(META))
    with pytest.raises(ModelRefused, match=r"2 outputs \['features', 'scores'\].*output: <name>"):
        load_model(path)
    sidecar.write_text(json.dumps({**META, "output": "logits"}))
    with pytest.raises(ModelRefused, match="'logits' is not an output of the graph"):
        load_model(path)
    sidecar.write_text(json.dumps({**META, "output": "scores"}))
    model = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.logits(x), net(model.preprocess(x)), atol=1e-5, rtol=1e-4)
    assert model.capabilities["cam"].available  # the head is found from the named output


def test_a_keras_model_converted_by_tf2onnx_scores_and_explains_as_keras_does() -> None:
    """A real tf2onnx graph (tests/data/make_keras_onnx.py): channels-last input detected, softmax outputs
    read as probabilities (score_activation none), and Grad-CAM equal to ``tf.GradientTape``'s."""
    import numpy as np

    data = Path(__file__).parents[1] / "data"
    ref = np.load(data / "keras_nhwc_reference.npz")
    model = load_model(data / "keras_nhwc.onnx")
    assert model.nhwc_input and tuple(model.metadata.input_size) == (32, 32)
    assert not [w for w in model.load_warnings() if w["code"] == "outputs_are_probabilities"]
    images = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2)  # the service's [N, 3, H, W] in [0, 1]
    torch.testing.assert_close(model.probabilities(model.logits(images)), torch.from_numpy(ref["probs"]),
                               atol=1e-6, rtol=1e-5)
    assert "autograd" in model.capabilities["gradcam"].reason  # GAP -> MatMul -> Add -> Softmax: head autograd
    ours = compute_salience(model, images, "gradcam", target=1).native
    torch.testing.assert_close(ours, torch.from_numpy(ref["gradcam"]), atol=1e-6, rtol=1e-4)
