"""The capability table: which salience methods a loaded model supports, and why.

A method is never substituted by another: a job asking for an unavailable method fails with the
reason given here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

from service.models.base import Capability, Model

if TYPE_CHECKING:
    from service.models.pt2_model import Pt2Model


def _is_pt2(model: Model) -> TypeGuard[Pt2Model]:
    # Imported only for a model that is not ONNX: pt2_model pulls in torch._dynamo through torch.export's
    # archive reader, about 2.5 s of every sandboxed inspection or job on an ONNX model.
    from service.models.pt2_model import Pt2Model

    return isinstance(model, Pt2Model)


def capability_table(model: Model) -> dict[str, Capability]:
    from service.models.onnx_model import OnnxModel

    caps: list[Capability] = []
    if isinstance(model, OnnxModel):
        head = model.onnx_head
        if head is None:
            no_layer = "no global average pool before the output, so no target layer is found automatically"
            caps += [Capability(m, False, f"{m}: {no_layer}") for m in ("gradcam", "cam", "gradcam++")]
            caps.append(
                Capability(
                    "scorecam",
                    True,
                    "scorecam: needs a named 4-D layer (layer=<tensor name>); forward passes only",
                )
            )
        else:
            where = f"{head.pool} on {head.layer!r}, head {head.chain}"
            if head.linear:
                caps.append(Capability("gradcam", True, f"gradcam: fast path, GAP+linear head found: {where}"))
                caps.append(Capability("cam", True, f"cam: GAP+linear head: {where}"))
                caps.append(Capability("gradcam++", True, f"gradcam++: fast path from the head's weights: {where}"))
            elif not head.unsupported:
                reason = f"one forward pass plus autograd on the head only: {where}"
                caps.append(Capability("gradcam", True, f"gradcam: {reason}"))
                caps.append(Capability("gradcam++", True, f"gradcam++: {reason}"))
                caps.append(Capability("cam", False, f"cam: needs a linear head after the pool, found {head.chain}"))
            else:
                why = (
                    f"the head after {head.pool} contains {sorted(set(head.unsupported))}, which cannot be "
                    "differentiated without the network; upload the .pt2 export for gradient methods"
                )
                caps += [Capability(m, False, f"{m}: {why}") for m in ("gradcam", "gradcam++", "cam")]
            caps.append(Capability("scorecam", True, f"scorecam: forward passes on masks from {head.layer!r}"))
        grad_why = (
            "needs input gradients through the whole network, unavailable for an ONNX graph (ONNX "
            "Runtime has no autograd); upload the .pt2 export to use it"
        )
        caps.append(Capability("integrated_gradients", False, f"integrated_gradients: {grad_why}"))
        caps.append(Capability("smoothgrad", False, f"smoothgrad: {grad_why}"))
    elif _is_pt2(model):
        if model.auto_layer is None:
            why = "no global average pool before the output; name a 4-D layer (layer=<node name>)"
            caps.append(Capability("gradcam", True, f"gradcam: autograd; {why}"))
            caps.append(Capability("gradcam++", True, f"gradcam++: autograd; {why}"))
            caps.append(Capability("cam", False, f"cam: {why} and a linear head"))
            caps.append(Capability("scorecam", True, f"scorecam: {why}"))
        else:
            where = f"{model.pool_desc}, target layer {model.auto_layer!r}"
            caps.append(Capability("gradcam", True, f"gradcam: autograd, {where}"))
            caps.append(Capability("gradcam++", True, f"gradcam++: autograd, {where}"))
            if model.head_is_linear:
                caps.append(
                    Capability(
                        "cam",
                        True,
                        f"cam: GAP+linear head ({' -> '.join(model.head_chain or [])}), "
                        "weights read as the constant head gradient",
                    )
                )
            else:
                caps.append(
                    Capability(
                        "cam",
                        False,
                        "cam: needs a linear head after the pool, found "
                        f"{' -> '.join(model.head_chain or []) or '(none)'}",
                    )
                )
            caps.append(Capability("scorecam", True, f"scorecam: forward passes on masks from {model.auto_layer!r}"))
        caps.append(Capability("integrated_gradients", True, "integrated_gradients: autograd on the input"))
        caps.append(Capability("smoothgrad", True, "smoothgrad: autograd on the input"))
    caps.append(Capability("rise", True, "rise: black-box, forward passes on random masks"))
    return {c.method: c for c in caps}
