"""What the installed ONNX Runtime can run: operator domains and the newest opset of each.

Learned from ONNX Runtime's own schema registry (``get_all_operator_schema``), so the limits follow
the installed version instead of a number written here that would rot when it is upgraded.
"""

from __future__ import annotations

from functools import lru_cache

import onnx
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from etm.errors import ModelRefused

DEFAULT_DOMAIN = ""  # "ai.onnx" is the same domain under its long name


def _domain(name: str) -> str:
    return DEFAULT_DOMAIN if name in ("", "ai.onnx") else name


@lru_cache(maxsize=1)
def supported_opsets() -> dict[str, int]:
    """Operator domain -> newest opset version ONNX Runtime has schemas for."""
    newest: dict[str, int] = {}
    for schema in ort_state.get_all_operator_schema():
        dom = _domain(schema.domain)
        newest[dom] = max(newest.get(dom, 0), int(schema.since_version))
    return newest


def _describe(opsets: dict[str, int]) -> str:
    return ", ".join(f"{d or 'ai.onnx'} <= {v}" for d, v in sorted(opsets.items()))


def check_opsets(proto: onnx.ModelProto, name: str) -> None:
    """Refuse a graph whose opset imports the installed ONNX Runtime cannot run.

    Domains defined by the model's own local functions are allowed (ONNX Runtime inlines them).

    Raises:
        ModelRefused: a default-domain opset newer than the runtime's, or an operator domain it does not provide.
    """
    supported = supported_opsets()
    local = {_domain(f.domain) for f in proto.functions}
    imports = {_domain(o.domain): int(o.version) for o in proto.opset_import}
    used = {_domain(n.domain) for n in proto.graph.node}
    missing = sorted(used - imports.keys() - local)
    if missing:
        raise ModelRefused(
            f"{name} uses operators of domain {missing[0] or 'ai.onnx'!r} without importing it (opset_import)"
        )
    for dom, version in sorted(imports.items()):
        if dom in local:
            continue
        if dom not in supported:
            raise ModelRefused(
                f"{name} imports operator domain {dom!r} (version {version}), which onnxruntime "
                f"{_ort_version()} does not provide (custom operators are not loaded); supported: "
                f"{_describe(supported)}. Export the model with standard ONNX operators only"
            )
        if version > supported[dom]:
            raise ModelRefused(
                f"{name} needs opset {version} of domain {dom or 'ai.onnx'!r}, but onnxruntime "
                f"{_ort_version()} supports up to {supported[dom]}; export with opset_version={supported[dom]} "
                "or lower (torch.onnx.export(..., opset_version=...)) or upgrade onnxruntime"
            )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
