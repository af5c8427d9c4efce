"""Gradient-based salience: Grad-CAM, Grad-CAM++, Integrated Gradients, SmoothGrad.

ONNX models: Grad-CAM and Grad-CAM++ need only ``d logit / d A`` at the target layer, which for a
global-average-pool head is ``d logit / d z`` spread over the ``h*w`` cells. For a linear head that
is the weight row (the one-forward-pass fast path); otherwise autograd runs on the small head alone,
and for any other head (a LayerNorm after the pool, a transformer's last block) on the nodes after
the target (``onnx_subgraph``). Token and channels-last activations arrive as ``[N, K, h, w]`` grids
(``layouts``), so every formula below reads the same for CNNs and transformers.
``.pt2`` models use autograd from the target activation through the rest of the network (the
reference the fast path is tested against). IG and SmoothGrad need input gradients, so only ``.pt2`` models offer them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from etm.models.base import Model
from etm.params import Param
from etm.salience.registry import register, targets_for

if TYPE_CHECKING:
    from etm.models.onnx_model import OnnxModel


def _pool_gradient(model: OnnxModel, pooled_input: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d class_logit / d z, z = the global mean of the pool's input: [N, K]."""
    assert model.onnx_head is not None
    head = model.head(model.onnx_head.layer)
    if head is not None:  # linear head: the gradient is the weight row, no autograd at all
        return model.class_weights(head, targets)
    fn = model.onnx_head.as_torch()
    z = pooled_input.mean(dim=(2, 3)).detach().requires_grad_(True)
    with torch.enable_grad():
        sel = model.class_logit(fn(z), targets).sum()
        (dz,) = torch.autograd.grad(sel, z)
    return dz


def _head_gradient(
    model: OnnxModel, act: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, layer: str
) -> torch.Tensor:
    """d class_logit / d A for every cell: [N, K, 1, 1] at the pool's input (constant over space under
    GAP), [N, K, h, w] at the input of a ReLU that feeds the pool (``1[A > 0]`` times that)."""
    hw = act.shape[2] * act.shape[3]
    assert model.onnx_head is not None
    if layer != model.onnx_head.layer and layer == model.pre_relu_layer:
        post = torch.relu(act)
        return (act > 0).to(act.dtype) * (_pool_gradient(model, post, targets) / hw)[:, :, None, None]
    return (_pool_gradient(model, act, targets) / hw)[:, :, None, None]


def _autograd_activation(
    model: Model, images: torch.Tensor, fixed: int | None, layer: str, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation A, d class_logit / d A and logits by autograd (pt2), in chunks to bound memory."""
    acts, grads, logits = [], [], []
    for i in range(0, len(images), chunk):
        # With a layer, autograd_forward makes A a leaf that requires grad and differentiates the
        # layers after it only, so the input needs no grad.
        f = model.autograd_forward(images[i : i + chunk].detach(), layer)
        assert f.activation is not None
        targets = targets_for(model, f.logits.detach(), fixed)
        sel = model.class_logit(f.logits, targets).sum()
        (g,) = torch.autograd.grad(sel, f.activation)
        acts.append(f.activation.detach())
        grads.append(g.detach())
        logits.append(f.logits.detach().float())
    return torch.cat(acts), torch.cat(grads), torch.cat(logits)


def _activation_and_grad(
    model: Model, images: torch.Tensor, fixed: int | None, layer: str, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if model.format == "onnx":  # by name: importing OnnxModel would load ONNX Runtime in the API
        head = model.onnx_head
        if head is not None and not head.unsupported and layer in (head.layer, model.pre_relu_layer):
            f = model.forward(images, layer)
            assert f.activation is not None
            targets = targets_for(model, f.logits, fixed)
            act, grad, logits = f.activation, _head_gradient(model, f.activation, f.logits, targets, layer), f.logits
        else:  # any other head (LayerNorm after the pool, a transformer's last block): head-only autograd
            act, grad, logits = model.head_gradient(images, layer, lambda lg: targets_for(model, lg, fixed))
    else:
        act, grad, logits = _autograd_activation(model, images, fixed, layer, chunk)
    if getattr(layer, "relu_after", False):  # layer: torchcam, as TorchCAM sees it (TorchCamLayer)
        act = torch.relu(act)
    return act, grad, logits


@register("gradcam", title="Grad-CAM", has_native=True, params={"chunk": Param(32, int, 1, 4096)})
def gradcam(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: str, seeds: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU(sum_k alpha_k A_k), alpha_k = spatial mean of d logit / d A_k (Selvaraju et al. 2017)."""
    act, grad, logits = _activation_and_grad(model, images, fixed, layer, chunk)
    alpha = grad.mean(dim=(2, 3))
    return torch.relu(torch.einsum("nk,nkhw->nhw", alpha, act)), logits


@register("gradcam++", title="Grad-CAM++", has_native=True, params={"chunk": Param(32, int, 1, 4096)})
def gradcam_pp(
    model: Model, images: torch.Tensor, *, fixed: int | None, layer: str, seeds: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM++ (Chattopadhay et al. 2018) with the usual exponential-output closed form for the
    higher derivatives (as in pytorch-grad-cam)."""
    act, grad, logits = _activation_and_grad(model, images, fixed, layer, chunk)
    grad = grad.expand_as(act)
    g2, g3 = grad.pow(2), grad.pow(3)
    sum_act = act.sum(dim=(2, 3), keepdim=True)
    aij = g2 / (2 * g2 + sum_act * g3 + 1e-7)
    aij = torch.where(grad != 0, aij, torch.zeros_like(aij))
    weights = (torch.relu(grad) * aij).sum(dim=(2, 3))
    return torch.relu(torch.einsum("nk,nkhw->nhw", weights, act)), logits


def _input_gradients(model: Model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = images.detach().requires_grad_(True)
    f = model.autograd_forward(x)
    (g,) = torch.autograd.grad(model.class_logit(f.logits, targets).sum(), x)
    return g


@register(
    "integrated_gradients",
    title="Integrated Gradients",
    has_native=False,
    params={
        "steps": Param(32, int, 2, 1024),  # the trapezoid rule needs both ends
        "baseline": Param("black", str, choices=("black", "grey")),
        "chunk": Param(16, int, 1, 4096),
    },
)
def integrated_gradients(
    model: Model,
    images: torch.Tensor,
    *,
    fixed: int | None,
    layer: None,
    seeds: torch.Tensor,
    steps: int,
    baseline: str,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017), trapezoid rule over ``steps`` points from a
    black (or ``grey``) baseline; the map is |attribution| summed over channels."""
    if baseline not in ("black", "grey"):
        raise ValueError("integrated_gradients baseline must be 'black' or 'grey'")
    logits = model.forward(images).logits
    targets = targets_for(model, logits, fixed)
    base = torch.zeros_like(images) if baseline == "black" else torch.full_like(images, 0.5)
    alphas = torch.linspace(0, 1, steps, device=images.device)
    weights = torch.full((steps,), 1.0 / (steps - 1), device=images.device)
    weights[0] = weights[-1] = 0.5 / (steps - 1)
    total = torch.zeros_like(images)
    for i in range(0, len(images), chunk):
        x, b, t = images[i : i + chunk], base[i : i + chunk], targets[i : i + chunk]
        for a, wgt in zip(alphas, weights, strict=True):
            total[i : i + chunk] += wgt * _input_gradients(model, b + a * (x - b), t)
    attribution = (images - base) * total
    return attribution.abs().sum(dim=1), logits


@register(
    "smoothgrad",
    title="SmoothGrad",
    has_native=False,
    params={"samples": Param(25, int, 1, 1024), "noise": Param(0.15, float, 0, 1)},  # noise: sigma / [0, 1] range
)
def smoothgrad(
    model: Model,
    images: torch.Tensor,
    *,
    fixed: int | None,
    layer: None,
    seeds: torch.Tensor,
    samples: int,
    noise: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothGrad (Smilkov et al. 2017): mean input gradient over ``samples`` noisy copies (Gaussian,
    sigma = ``noise`` x the [0, 1] range), |mean| summed over channels. Noise is seeded per image."""
    logits = model.forward(images).logits
    targets = targets_for(model, logits, fixed)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
    total = torch.zeros_like(images)
    for _ in range(samples):
        eps = torch.stack([torch.randn(images.shape[1:], generator=g) for g in gens]).to(images.device)
        total += _input_gradients(model, images + noise * eps, targets)
    return (total / samples).abs().sum(dim=1), logits
