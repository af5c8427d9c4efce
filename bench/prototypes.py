"""Prototypes that prove a service-side speed-up (exact same numbers), measured in figure 2.

Nothing here is used by the service; ``docs/BENCHMARKS.md`` says what to change in ``service/``.
"""

from __future__ import annotations

import torch

from service.ops.blur import gaussian_blur, level_sigma


def variable_blur_where(images: torch.Tensor, levels: torch.Tensor, truncate: float = 4.0) -> torch.Tensor:
    """``service.ops.blur.variable_blur`` with the same blurs, but each level's pixels are taken with
    one ``torch.where`` over the batch instead of boolean-mask gather/scatter, the sigmas are
    computed once, and the blurs run in float32 on the same GEMM shapes (bit-identical output)."""
    qs = torch.unique(levels)
    sigmas = level_sigma(qs).tolist()
    out = images
    for q, sigma in zip(qs.tolist(), sigmas, strict=True):
        if int(truncate * sigma + 0.5) == 0:  # 1-tap kernel: unchanged, as in scipy
            continue
        at = (levels == q).unsqueeze(1)
        out = torch.where(at, gaussian_blur(images, sigma, truncate), out)
    return out


def ssim_uint8(a: torch.Tensor, b: torch.Tensor, data_range: float, win: int = 7) -> torch.Tensor:
    """``service.ops.ssim.ssim`` (no mask) for uint8 maps, bit-identical and several times faster.

    With 8-bit maps every window sum of x, y, x*x, y*y and x*y is an integer below 49 * 255**2 <
    2**24, so it is exact in float32 whatever the summation order: the sums come from one float32
    ``avg_pool2d`` (``divisor_override=1``) and only then go to float64, where ``sum / win**2`` is
    the very value the float64 shifted-slice ``box_mean`` produces. The rest is ``ssim_map``'s own
    arithmetic, in the same order.
    """
    import torch.nn.functional as F

    from service.ops.ssim import K1, K2

    n, h, w = a.shape
    x = a.to(torch.float32)
    y = b.to(torch.float32)
    planes = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    sums = F.avg_pool2d(planes, win, stride=1, divisor_override=1).to(torch.float64)
    ux, uy, uxx, uyy, uxy = sums.div_(win * win).unbind(1)
    np_ = win * win
    cov_norm = np_ / (np_ - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return torch.from_numpy(s.numpy().reshape(n, -1).mean(axis=1))


def histogram_entropy_lut(maps8: torch.Tensor) -> torch.Tensor:
    """``service.measures.entropy.histogram_entropy`` with ``p log2 p`` read from a table of the
    ``h*w + 1`` possible counts instead of evaluated on all 256 bins of every map: the same terms,
    summed in the same rows, so the same bits, without 256 logarithms per map."""
    import numpy as np

    n, h, w = maps8.shape
    hw = h * w
    v = maps8.reshape(n, hw).numpy().astype(np.int64)
    counts = np.bincount((v + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n).reshape(n, 256)
    p = np.arange(hw + 1) / float(hw)
    with np.errstate(invalid="ignore", divide="ignore"):
        lut = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
        ent = (0.0 - lut[counts].sum(axis=-1)) / np.log2(hw)
    return torch.from_numpy(ent)


def ssim_small_chunks(a: torch.Tensor, b: torch.Tensor, data_range: float, chunk_elems: int = 1 << 18) -> torch.Tensor:
    """``service.ops.ssim.ssim`` itself, run with ``_CHUNK_ELEMS = 2**18`` instead of ``2**22``: the
    float64 temporaries of a chunk (5 planes x 8 bytes x elements) then stay in the CPU caches. The
    value of every map does not depend on its chunk (the module's own guarantee), so the bits match."""
    import service.ops.ssim as ssim_mod

    old = ssim_mod._CHUNK_ELEMS
    ssim_mod._CHUNK_ELEMS = chunk_elems
    try:
        return ssim_mod.ssim(a, b, data_range)
    finally:
        ssim_mod._CHUNK_ELEMS = old


_LEAVES: list[torch.Tensor] = []


def _grad_leaf(x: torch.Tensor) -> torch.Tensor:
    """Cut the autograd graph at the target activation: what follows (the head) is differentiated,
    what precedes it (the whole network) never is."""
    leaf = x.detach().requires_grad_(True)
    _LEAVES.append(leaf)
    return leaf


def pt2_head_only(model):
    """A ``.pt2`` Grad-CAM that differentiates the head only, as the ONNX fast path does.

    The service's ``.pt2`` Grad-CAM runs the graph node by node (``fx.Interpreter``) with the input
    requiring grad, then back-propagates through the whole network, although ``d logit / d A`` at
    the target layer ``A`` only involves the layers after ``A``. This rewrites a copy of the graph
    once (our own code, not the file's: the safe loader's checks still apply to the program) so that
    ``A``'s users read a detached leaf that requires grad: one compiled forward without autograd
    bookkeeping in the body, then a backward through the head alone. The maps equal the service's
    (Grad-CAM needs nothing else). Returns ``gradcam(images) -> (native [N, h, w], logits)``.
    """
    import copy

    layer = model.resolve_layer("auto")
    gm = copy.deepcopy(model.gm)
    node = next(n for n in gm.graph.nodes if n.name == layer)
    with gm.graph.inserting_after(node):
        leaf = gm.graph.call_function(_grad_leaf, (node,))
    node.replace_all_uses_with(leaf, delete_user_cb=lambda user: user is not leaf)
    gm.recompile()

    def gradcam(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from service.models.pt2_model import _first

        _LEAVES.clear()
        x = model.preprocess(images)
        with torch.enable_grad():
            logits = _first(gm(x))
            act = _LEAVES[-1]
            targets = model.predicted(logits.detach())
            (grad,) = torch.autograd.grad(model.class_logit(logits, targets).sum(), act)
        alpha = grad.mean(dim=(2, 3))
        return torch.relu(torch.einsum("nk,nkhw->nhw", alpha, act.detach())), logits.detach().float()

    return gradcam
