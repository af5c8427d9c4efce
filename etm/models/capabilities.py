"""The capability table: which salience methods a loaded model supports, and why.

A method is never substituted by another: a job asking for an unavailable method fails with the
reason given here.

The table is computed from the loaded model (``load_model`` sets ``Model.capabilities``). A copy kept
outside the model (a registry record) carries ``capabilities_version()``: a copy with another version
was computed by other code and is recomputed, so a method added later is offered for models registered
before it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, TypeGuard

from etm.models.base import Capability, Model
from etm.salience.registry import method_names

# Bump when ``capability_table`` decides differently for a method that already exists (a new method
# changes ``capabilities_version`` by itself).
CAPABILITIES_VERSION = "etm-capabilities-v1"


def capabilities_version() -> str:
    """The version of the tables this code computes: ``CAPABILITIES_VERSION`` and the registered methods.

    The names are sorted: registration order follows import order, which differs between the API, the workers
    and the sandboxed model process, and a version that differed between them would make every read of a
    record re-inspect its model."""
    text = "\n".join([CAPABILITIES_VERSION, *sorted(method_names())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]

if TYPE_CHECKING:
    from etm.models.onnx_model import OnnxModel
    from etm.models.pt2_model import Pt2Model


def _is_pt2(model: Model) -> TypeGuard[Pt2Model]:
    # Imported only for a model that is not ONNX: pt2_model pulls in torch._dynamo through torch.export's
    # archive reader, about 2.5 s of every sandboxed inspection or job on an ONNX model.
    from etm.models.pt2_model import Pt2Model

    return isinstance(model, Pt2Model)


_LAYOUTS = {"tokens": "patch tokens as a grid", "nhwc": "channels-last map", "nchw": "feature map"}


def _not_linear(chain: str) -> str:
    return (
        f"the logits are not a linear function of the pooled target ({chain}), so there are no class weights "
        "to read; Grad-CAM gives the exact gradient instead"
    )


def _onnx_subgraph_caps(model: OnnxModel) -> list[Capability]:
    """Grad-CAM by head-only autograd through the nodes after the target (``onnx_subgraph``)."""
    target = model.token_target
    if model.onnx_head is not None:
        layer, how = model.onnx_head.layer, f"{model.onnx_head.pool}, head {model.onnx_head.chain}"
    else:
        assert target is not None
        layer, how = target.layer, f"{target.how} ({_LAYOUTS[target.kind]})"
    head = model.subgraph(layer)
    caps = []
    if head.unsupported:
        why = (
            f"the nodes after {layer!r} contain {head.unsupported}, which cannot be differentiated without the "
            "network; upload the .pt2 export for gradient methods"
        )
        caps += [Capability(m, False, f"{m}: {why}") for m in ("gradcam", "gradcam++")]
    else:
        reason = f"one forward pass plus autograd on the {head.summary} after {layer!r}: {how}"
        caps += [Capability(m, True, f"{m}: {reason}") for m in ("gradcam", "gradcam++")]
    chain = model.onnx_head.chain if model.onnx_head is not None else " -> ".join(target.head if target else [])
    caps.append(Capability("cam", False, f"cam: {_not_linear(chain)}"))
    caps.append(Capability("scorecam", True, f"scorecam: forward passes on masks from {layer!r}"))
    return caps


def _is_onnx(model: Model) -> TypeGuard[OnnxModel]:
    return model.format == "onnx"  # by name: importing OnnxModel loads onnx and ONNX Runtime


def capability_table(model: Model) -> dict[str, Capability]:
    caps: list[Capability] = []
    if _is_onnx(model):
        head = model.onnx_head
        if head is not None and (head.linear or not head.unsupported):
            where = f"{head.pool} on {head.layer!r}, head {head.chain}"
            if head.linear:
                caps.append(Capability("gradcam", True, f"gradcam: fast path, GAP+linear head found: {where}"))
                caps.append(Capability("cam", True, f"cam: GAP+linear head: {where}"))
                caps.append(Capability("gradcam++", True, f"gradcam++: fast path from the head's weights: {where}"))
            else:
                reason = f"one forward pass plus autograd on the head only: {where}"
                caps.append(Capability("gradcam", True, f"gradcam: {reason}"))
                caps.append(Capability("gradcam++", True, f"gradcam++: {reason}"))
                caps.append(Capability("cam", False, f"cam: needs a linear head after the pool, found {head.chain}"))
            caps.append(Capability("scorecam", True, f"scorecam: forward passes on masks from {head.layer!r}"))
        elif head is not None or model.token_target is not None:
            caps += _onnx_subgraph_caps(model)
        else:
            no_layer = (
                "no global average pool, token mean or class-token read-out before the output, so no target "
                "layer is found automatically"
            )
            caps += [Capability(m, False, f"{m}: {no_layer}") for m in ("gradcam", "gradcam++", "cam")]
            caps.append(Capability("scorecam", True, f"scorecam: forward passes only; {no_layer}"))
        grad_why = (
            "needs input gradients through the whole network, unavailable for an ONNX graph (ONNX "
            "Runtime has no autograd); upload the .pt2 export to use it"
        )
        caps.append(Capability("integrated_gradients", False, f"integrated_gradients: {grad_why}"))
        caps.append(Capability("smoothgrad", False, f"smoothgrad: {grad_why}"))
    elif _is_pt2(model):
        if model.auto_layer is None:
            why = "no global average pool, token mean or class-token read-out before the output; name a layer"
            caps.append(Capability("gradcam", True, f"gradcam: autograd; {why} (layer=<node name>)"))
            caps.append(Capability("gradcam++", True, f"gradcam++: autograd; {why} (layer=<node name>)"))
            caps.append(Capability("cam", False, f"cam: {why} and a linear head"))
            caps.append(Capability("scorecam", True, f"scorecam: {why}"))
        else:
            layout = "" if model.auto_kind == "nchw" else f" ({_LAYOUTS[model.auto_kind]})"
            where = f"{model.pool_desc}, target layer {model.auto_layer!r}{layout}"
            caps.append(Capability("gradcam", True, f"gradcam: autograd, {where}"))
            caps.append(Capability("gradcam++", True, f"gradcam++: autograd, {where}"))
            chain = " -> ".join(model.head_chain or []) or "(none)"
            if model.head_is_linear:
                reason = f"cam: pool + linear head ({chain}), weights read as the constant head gradient"
                caps.append(Capability("cam", True, reason))
            else:
                caps.append(Capability("cam", False, f"cam: {_not_linear(chain)}"))
            caps.append(
                Capability("scorecam", True, f"scorecam: forward passes on masks from {model.auto_layer!r}{layout}")
            )
        caps.append(Capability("integrated_gradients", True, "integrated_gradients: autograd on the input"))
        caps.append(Capability("smoothgrad", True, "smoothgrad: autograd on the input"))
    caps.append(Capability("rise", True, "rise: black-box, forward passes on random masks"))
    caps += _attention_caps(model)
    table = {c.method: c for c in caps}
    return table | _declared_caps(model, table)


def _declared_caps(model: Model, known: dict[str, Capability]) -> dict[str, Capability]:
    """Methods the table above does not know (plugins), by their own ``capability`` check; one without a check is
    left out, so a job asking for it is refused as unavailable (never guessed)."""
    from etm.salience.registry import methods

    out = {}
    for name, method in methods().items():
        if name in known or method.capability is None:
            continue
        available, reason = method.capability(model)
        out[name] = Capability(name, bool(available), f"{name}: {reason}")
    return out


def _attention_caps(model: Model) -> list[Capability]:
    """Attention rollout needs attention over all tokens and a head that reads a class token or their mean."""
    from etm.errors import BadInput
    from etm.salience.attention import readout_token

    onnx = model.format == "onnx"
    blocks = getattr(model, "attention_outputs" if onnx else "attention_layers", [])
    try:
        readout = readout_token(model)
    except BadInput as exc:  # no token head (a CNN, or Swin's channels-last stages)
        why = f"{exc}" if blocks else "the model has no attention layers"
        return [Capability(m, False, f"{m}: {why}") for m in ("rollout", "gradient_rollout")]
    if not blocks:
        why = "no attention over the tokens found (fused or softmax)"
        return [Capability(m, False, f"{m}: {why}") for m in ("rollout", "gradient_rollout")]
    reads = f"class token {readout}" if readout is not None else "the mean of the tokens"
    where = f"{len(blocks)} attention blocks, the row of {reads}"
    caps = [Capability("rollout", True, f"rollout: forward pass, {where}")]
    if onnx:
        why = (
            "needs the gradient at every block's attention, through the whole network, which ONNX Runtime "
            "cannot give; upload the .pt2 export to use it"
        )
        caps.append(Capability("gradient_rollout", False, f"gradient_rollout: {why}"))
    else:
        caps.append(Capability("gradient_rollout", True, f"gradient_rollout: autograd, {where}"))
    return caps
