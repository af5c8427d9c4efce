"""The model zoo of the architecture tests: the detectors people ship (timm, random weights, 2 classes),
in configurations small enough for CI (a few blocks, narrow widths), each exported three ways.

Shrinking depth and width keeps every structural feature the service has to handle: class, distillation
and register tokens, mean-pooled heads with ``fc_norm``, Swin's channels-last stages and window
attention, ConvNeXt's pool -> LayerNorm -> linear head, EfficientNet's squeeze-excitation blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.helpers.tiny import META, export

FORMATS = ("pt2", "onnx", "onnx-legacy")
_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
# Xception-41's entry, middle and exit flows, one block each and narrow (the stem's 64 channels are fixed).
_XCEPTION_BLOCKS = [
    {"in_chs": 64, "out_chs": 32, "stride": 2},
    {"in_chs": 32, "out_chs": 48, "stride": 2},
    {"in_chs": 48, "out_chs": 48, "stride": 1},
    {"in_chs": 48, "out_chs": (48, 64, 64), "stride": 2},
    {"in_chs": 64, "out_chs": (64, 64, 96), "stride": 1, "no_skip": True, "start_with_relu": False},
]


@dataclass(frozen=True)
class Arch:
    """``timm_name`` built with ``kwargs`` at ``size`` px; ``shows``: what the full-size model is."""

    timm_name: str
    shows: str
    kwargs: dict = field(default_factory=dict)
    size: int = 32


ZOO: dict[str, Arch] = {
    "vit": Arch("vit_tiny_patch16_224", "ViT-Tiny/16 (class token)", {**_VIT}),
    "deit": Arch("deit_tiny_distilled_patch16_224", "DeiT-Tiny distilled (class + distillation token)", {**_VIT}),
    "vit_reg": Arch("vit_tiny_patch16_224", "ViT with 4 register tokens", {**_VIT, "reg_tokens": 4}),
    "vit_avg": Arch(
        "vit_tiny_patch16_224",
        "ViT, mean-pooled tokens + fc_norm (BEiT-style head)",
        {**_VIT, "global_pool": "avg", "class_token": False, "fc_norm": True},
    ),
    "clip_vit": Arch("vit_base_patch16_clip_224", "CLIP ViT-B/16 image tower (pre-norm, linear probe)", {**_VIT}),
    "swin": Arch(
        "swin_tiny_patch4_window7_224",
        "Swin-T (channels-last stages, window attention, mean over tokens)",
        {"img_size": 32, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 16, "window_size": 4},
    ),
    "convnext": Arch(
        "convnext_atto",
        "ConvNeXt-Atto (pool -> LayerNorm -> linear head)",
        {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)},
        size=96,  # stride 32: 3x3 maps, the least the SSIM measures take
    ),
    "efficientnet": Arch("test_efficientnet", "EfficientNet (timm's own small test config: SE blocks)", size=64),
    "xception": Arch("xception41", "Xception-41 (aligned, separable convs)", {"block_cfg": _XCEPTION_BLOCKS}, 64),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with the weights of ``seed`` (another seed: another training run of the same recipe)."""
    import timm

    arch = ZOO[name]
    torch.manual_seed(seed)
    return timm.create_model(arch.timm_name, pretrained=False, num_classes=2, **arch.kwargs).eval()


def export_all(name: str, out: Path) -> dict[str, Path]:
    """``name`` exported as ``.pt2`` and by both ONNX exporters, with the tests' metadata."""
    net = build(name)
    size = ZOO[name].size
    paths = {}
    for fmt in FORMATS:
        ext = "pt2" if fmt == "pt2" else "onnx"
        paths[fmt] = export(net, out / f"{name}_{fmt}.{ext}", fmt, size=size, meta=META)
    return paths


def target_module(name: str, net: torch.nn.Module) -> torch.nn.Module:
    """The module whose output ``layer: auto`` picks, named as pytorch-grad-cam's docs name it: the last
    block's ``norm1`` for class-token ViTs, the last block for mean-pooled ones, the last stage for Swin."""
    if name in ("vit", "deit", "vit_reg", "clip_vit"):
        return net.blocks[-1].norm1  # type: ignore[index,union-attr]
    if name == "vit_avg":
        return net.blocks[-1]  # type: ignore[index]
    if name == "swin":
        return net.layers[-1]  # type: ignore[index]
    return getattr(net, {"convnext": "stages", "efficientnet": "bn2", "xception": "act"}[name])


def reshape_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's documented ``reshape_transform`` for ViT (drop the class token, rows x cols x
    channels, channels first) with this model's prefix count, and for Swin (rows x cols x channels,
    channels first: timm's Swin stages are already 4-D)."""
    prefix = {"vit": 1, "clip_vit": 1, "deit": 2, "vit_reg": 5, "vit_avg": 0}
    if name in prefix:
        p = prefix[name]

        def vit(t: torch.Tensor) -> torch.Tensor:
            side = int((t.size(1) - p) ** 0.5)
            return t[:, p:, :].reshape(t.size(0), side, side, t.size(2)).transpose(2, 3).transpose(1, 2)

        return vit
    if name == "swin":
        return lambda t: t.reshape(t.size(0), t.size(1), t.size(2), t.size(3)).transpose(2, 3).transpose(1, 2)
    return None


class _ToGrid(torch.nn.Module):
    """The target's output as a grid (by pytorch-grad-cam's transform), for Captum, whose ``LayerGradCam``
    expects a layer that outputs [N, K, h, w]; ``_FromGrid`` turns it back for the rest of the network."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform
        self.raw: torch.Tensor | None = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.raw = t
        return self.transform(t)


class _FromGrid(torch.nn.Module):
    def __init__(self, to_grid: _ToGrid) -> None:
        super().__init__()
        self.to_grid = [to_grid]  # not a submodule: Captum must hook only _ToGrid

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        raw = self.to_grid[0].raw
        assert raw is not None
        if raw.ndim == 4:  # a channels-last stage
            return g.permute(0, 2, 3, 1)
        patches = g.permute(0, 2, 3, 1).reshape(g.shape[0], -1, g.shape[1])
        return torch.cat([raw[:, : raw.shape[1] - patches.shape[1]], patches], dim=1)


def grid_layer(
    net: torch.nn.Module, module: torch.nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.nn.Module:
    """Replace ``module`` in ``net`` by ``module -> to grid -> back``; return the to-grid layer to hook."""
    assert transform is not None
    to_grid = _ToGrid(transform)
    parent_name, _, attr = next(n for n, m in net.named_modules() if m is module).rpartition(".")
    setattr(net.get_submodule(parent_name), attr, torch.nn.Sequential(module, to_grid, _FromGrid(to_grid)))
    return to_grid
