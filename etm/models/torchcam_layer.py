"""TorchCAM's default target layer (``layer: torchcam``), found on an exported graph.

The authors of the paper called TorchCAM 0.3.2's ``GradCAM(model)`` without a layer, so their maps
come from the layer ``torchcam.methods._utils.locate_candidate_layer`` picks. The rule is about
PyTorch modules, so it needs the module scopes the exporters record: ``nn_module_stack`` in a
``.pt2`` (``pt2_validate.module_calls``), name scopes in an ONNX graph (``onnx_head.module_calls``).
"""

from __future__ import annotations


def torchcam_candidate(
    nodes: list[tuple[str, tuple[int, ...] | None]], calls: dict[str, tuple[str, ...]]
) -> str | None:
    """TorchCAM 0.3.2's default target layer (``locate_candidate_layer``) on a graph's nodes.

    TorchCAM hooks every module, runs a forward pass and takes, among the recorded module outputs in
    reverse order of completion, the first that is 4-D with a spatial size other than 1x1. A module
    call completes at the last node inside it, so: the last node of each call (``calls``: node name
    -> the module calls it runs in), latest first, the first with such a shape. For DenseNet-121 that
    is ``features`` (its last op is ``norm5``, before the functional ReLU); for ResNet-50, ``layer4``.

    Args:
        nodes: (name, output shape or None) in graph order.
        calls: from ``pt2_validate.module_calls`` or the ONNX name scopes.
    """
    ends: dict[str, int] = {}
    for i, (name, _) in enumerate(nodes):
        for call in calls.get(name, ()):
            ends[call] = i  # graph order: the last node of the call wins
    for i in sorted(set(ends.values()), reverse=True):
        shape = nodes[i][1]
        if shape is not None and len(shape) == 4 and any(d != 1 for d in shape[2:]):
            return nodes[i][0]
    return None


class TorchCamLayer(str):
    """The resolved ``layer: torchcam``: the node name, plus whether TorchCAM's kept activation is the
    output of an in-place ReLU applied after the layer (torchvision's DenseNet:
    ``F.relu(features, inplace=True)``). TorchCAM holds a reference to the module's output, so such a
    ReLU changes the activation it weighs, while its gradient hook still sees the gradient before the
    ReLU: its DenseNet-121 map is ``ReLU(sum_k mean(d logit / d A_k) * ReLU(A_k))`` with A the
    ``features`` output. Grad-CAM reads ``relu_after`` to compute the same (and only then)."""

    relu_after: bool

    def __new__(cls, name: str, relu_after: bool) -> TorchCamLayer:
        obj = super().__new__(cls, name)
        obj.relu_after = relu_after
        return obj
