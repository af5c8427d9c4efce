"""The benchmark's detector: a small CNN with a global-average-pool + linear head.

The head is the CAM-friendly one of the paper's models (ResNet/DenseNet style): logits =
W @ mean_hw(A) + b, where A is the last conv activation (8x8 at 64 px input). For that head
Grad-CAM equals CAM up to a positive factor, so the service's fast path applies.
"""

from __future__ import annotations

import torch
from torch import nn

CLASS_NAMES = ("real", "synthetic")
POSITIVE_CLASS = "synthetic"
# Images reach the net as RGB in [0, 1]; this is the normalisation the exported metadata declares.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    # BatchNorm: without it the weak, localised fingerprints are not found in a CPU-sized budget
    # (the loss sits at log 2 for epochs); in eval mode it is an affine map the exporters fold.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class FaceNet(nn.Module):
    """Conv(3->c1) at full resolution, then three conv/pool stages down to 1/8 of the input.

    The first conv runs at full resolution on purpose: the generator fingerprints include
    one-pixel checkerboards that a strided stem would alias away.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 48, 64)) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.features = nn.Sequential(
            *_block(3, c1, pool=True),  # 64 -> 32
            *_block(c1, c2, pool=True),  # 32 -> 16
            *_block(c2, c3, pool=True),  # 16 -> 8
            *_block(c3, c4, pool=False),  # 8x8: the CAM layer
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c4, len(CLASS_NAMES))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv activation [N, K, h, w] (after ReLU)."""
        return self.features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 2] from a normalised input [N, 3, H, W]."""
        return self.head(self.forward_features(x))

    def cam(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation maps [N, h, w] (not ReLU'd): sum_k w[c, k] * A_k for each image's class."""
        w = self.fc.weight[classes]  # [N, K]
        return torch.einsum("nk,nkhw->nhw", w, features)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the net's input, with the declared mean/std."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
