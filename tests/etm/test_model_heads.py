"""Heads after the global pool beyond GAP + linear: a BatchNorm1d before the classifier (still linear, so
CAM and the ONNX fast path apply), and a second, non-linear branch added to it (Grad-CAM by head
autograd on ONNX, CAM refused everywhere, since there are no class weights to read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from etm.models.loader import load_model
from etm.salience.registry import compute_salience
from tests.helpers.tiny import export

FORMATS = {"pt2": "pt2", "onnx": "onnx", "onnx-legacy": "onnx"}


class PoolNormLinear(torch.nn.Module):
    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.bn, self.fc = torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
        self.branch = branch
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x).mean(dim=(2, 3))
        return self.fc(self.bn(z)) + (self.mlp(z) if self.branch else 0)


@pytest.mark.parametrize("branch", [False, True])
def test_pool_norm_heads(tmp_path: Path, branch: bool) -> None:
    torch.manual_seed(0)
    net = PoolNormLinear(branch).eval()
    net.bn.running_mean.uniform_(-1, 1)  # a trained norm, not the identity
    net.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(3, 3, 32, 32)
    models = {fmt: load_model(export(net, tmp_path / f"{fmt}.{ext}", fmt)) for fmt, ext in FORMATS.items()}
    ref = compute_salience(models["pt2"], x, "gradcam", target=1).native
    for fmt, model in models.items():
        cam = model.capabilities["cam"]
        assert cam.available is not branch, (fmt, cam.reason)
        grad = model.capabilities["gradcam"].reason
        assert ("fast path" in grad) is (fmt != "pt2" and not branch), (fmt, grad)
        got = compute_salience(model, x, "gradcam", target=1).native
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
        if cam.available:  # a linear head: CAM = h*w x Grad-CAM, from the head's weights
            by_cam = compute_salience(model, x, "cam", target=1).native
            torch.testing.assert_close(by_cam, ref * ref.shape[-1] * ref.shape[-2], atol=1e-5, rtol=1e-4)
