"""What every salience method returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SalienceResult:
    """Salience of a batch of N images.

    Attributes:
        native: [N, h, w] float32, ReLU'd map at the target layer's resolution. For methods without
            a native resolution (IG, SmoothGrad, RISE) this is the input-size map and
            ``native_is_input_size`` is True.
        upsampled: [N, H, W] float32, bilinear upsampling of ``native`` to the input size.
        logits: [N, C] logits of the clean forward pass.
        targets: [N] long, the class the map explains.
        scores: [N] float32, probability of the target class (the score s(x)).
        predicted: [N] long, argmax class.
        native_is_input_size: see ``native``.
    """

    native: torch.Tensor
    upsampled: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    predicted: torch.Tensor
    native_is_input_size: bool = False
