"""Prototypes that prove a service-side speed-up (exact same numbers), measured in figure 2.

Nothing here is used by the service; ``docs/BENCHMARKS.md`` says what to change in ``service/``.
"""

from __future__ import annotations

import torch

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
