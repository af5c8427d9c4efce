"""ONNX graphs that misbehave on purpose, built with onnx.helper (no exporter): newer opsets than the
runtime knows, a custom operator domain, NaN outputs, an output whose real shape contradicts the
graph, a slow graph (for time limits) and memory-hungry graphs (for out-of-memory retries).

All take [N, 3, 32, 32] images and end in GlobalAveragePool -> Flatten -> Gemm, so Grad-CAM finds
its head, unless said otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from etm.models.onnx_support import supported_opsets
from tests.helpers.tiny import META

OPSET = 17


def _save(proto: onnx.ModelProto, out: Path) -> Path:
    onnx.save(proto, str(out))
    out.with_name(out.name + ".json").write_text(json.dumps(META))
    return out


def conv_net(
    out: Path, channels: int = 8, repeats: int = 0, *, wide: int = 0, nan_input: bool = False, seed: int = 0
) -> Path:
    """[conv(3->wide) -> relu ->] conv(->channels) -> relu -> ``repeats`` x [identity conv -> relu] -> GAP -> Gemm.

    The repeated 3x3 convolutions cost as much as any (ONNX Runtime does not skip identity kernels) but
    keep the activations bounded, so a deep stack is slow without overflowing. ``wide``: a first layer of
    that many channels, an intermediate of ``wide * 4 KiB`` per 32x32 image that lives in ONNX Runtime's
    arena (unlike the target layer, which Grad-CAM fetches as an output). ``nan_input``: the input is
    multiplied by NaN first, so every output is NaN.
    """
    rng = np.random.default_rng(seed)
    first_in = wide or 3
    inits = [
        numpy_helper.from_array((rng.standard_normal((channels, first_in, 3, 3)) * 0.3).astype(np.float32), "w0"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((2, channels)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
    ]
    nodes = []
    src = "x"
    if nan_input:
        inits.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["x", "nan"], ["x_nan"]))
        src = "x_nan"
    if wide:
        inits.append(numpy_helper.from_array((rng.standard_normal((wide, 3, 3, 3)) * 0.3).astype(np.float32), "ww"))
        nodes += [helper.make_node("Conv", [src, "ww"], ["cw"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["cw"], ["rw"])]
        src = "rw"
    nodes += [helper.make_node("Conv", [src, "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c0"], ["r0"])]
    if repeats:
        ident = np.zeros((channels, channels, 3, 3), np.float32)
        ident[np.arange(channels), np.arange(channels), 1, 1] = 1.0
        inits.append(numpy_helper.from_array(ident, "w_id"))
    for i in range(1, repeats + 1):
        nodes += [helper.make_node("Conv", [f"r{i - 1}", "w_id"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
    nodes += [
        helper.make_node("GlobalAveragePool", [f"r{repeats}"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), out)


def with_opset(src: Path, out: Path, version: int) -> Path:
    proto = onnx.load(str(src))
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    return _save(proto, out)


def newer_opset_than_runtime(src: Path, out: Path) -> Path:
    return with_opset(src, out, supported_opsets()[""] + 1)


def custom_domain(src: Path, out: Path, domain: str = "com.example.custom") -> Path:
    """A node of an operator domain no runtime provides (its output unused)."""
    proto = onnx.load(str(src))
    proto.opset_import.append(helper.make_opsetid(domain, 1))
    proto.graph.node.append(helper.make_node("Magic", ["x"], ["magic"], domain=domain))
    return _save(proto, out)


def wrong_shape(src: Path, out: Path) -> Path:
    """Declares [n, 2] but reshapes the scores to [n/2, 4] at run time (shape computed from data, so the
    checker cannot see it)."""
    proto = onnx.load(str(src))
    final = proto.graph.output[0].name
    inner = final + "_inner"
    for node in proto.graph.node:
        node.output[:] = [inner if o == final else o for o in node.output]
    consts = {"two": np.array([2], np.int64), "minus1": np.array([-1], np.int64)}
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    proto.graph.node.extend([
        helper.make_node("Shape", [inner], ["shp"], start=0, end=1),
        helper.make_node("Div", ["shp", "two"], ["half"]),
        helper.make_node("Concat", ["half", "minus1"], ["new_shape"], axis=0),
        helper.make_node("Reshape", [inner, "new_shape"], [final]),
    ])
    return _save(proto, out)
