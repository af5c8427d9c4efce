"""Static checks of an ONNX model, before ONNX Runtime (or ``onnx.checker``, which stats external-data
paths) sees it: defence in depth under the OS sandbox that runs every model load.

Every graph is walked: the main graph, every subgraph held in a node attribute (``If`` branches and
the bodies of any other node, recursively) and the bodies of model-local functions. Refused:

- external data anywhere (initializers, sparse initializers, tensor attributes of ``Constant`` and
  other nodes, function attributes): ONNX Runtime reads such tensors from a path next to the model or,
  for a model given as bytes as here, relative to the worker's working directory, so a subgraph
  initializer with ``location="secret.txt"`` copies that file into the scores;
- ``Loop``, ``Scan`` and ``SequenceMap``: their trip counts cannot be bounded before running them
  (constant, or computed from the input so that blank probe images run zero iterations), and image
  classifiers do not need them. ``If`` is accepted; its branches are checked like any graph;
- node domains other than the standard ``ai.onnx`` (``""``), unless the node calls a model-local
  function whose body passes the same checks; recursive local functions; ``training_info`` graphs;
- tensors whose declared size exceeds what the file could hold (their data must be in the file), raw
  data of the wrong length, sparse tensors ONNX Runtime would make dense above ``MAX_ELEMENTS``;
- ``ConstantOfShape``, ``Expand``, ``Tile``, ``Range``, ``Resize``, ``Upsample``, ``Pad``, ``OneHot``,
  ``RandomNormal``, ``RandomUniform`` whose sizes are constants (initializers, ``Constant`` nodes,
  attributes) and make an output of more than ``MAX_ELEMENTS`` elements; ``pads``, ``output_shape``
  and ``output_padding`` attributes (convolutions, pools) above ``MAX_PADDING``.

Sizes computed from the input at run time are not bounded here (the sandbox's memory limit is).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from etm.errors import ModelRefused

MAX_ELEMENTS = 1 << 28  # 256 Mi elements: 1 GiB of float32 in one tensor whose size is a constant
MAX_PADDING = 1 << 16  # pads / output_shape / output_padding attributes (Conv, ConvTranspose, pools, Pad-2)
_PADDING_ATTRS = frozenset({"pads", "output_shape", "output_padding"})
STANDARD_DOMAINS = ("", "ai.onnx")
_LOOPS = ("Loop", "Scan", "SequenceMap")
_SELF_CONTAINED = "onnx.save_model(model, path, save_as_external_data=False)"
_CONST_LIMIT = 4096  # constants larger than this are never sizes: not decoded


@dataclass
class _Scope:
    """One graph being walked: where it is (for messages), the constants visible in it (its own and
    its enclosing graphs'), and the statically known shapes of its values."""

    where: str
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, list[int | None]] = field(default_factory=dict)


def _bits(data_type: int) -> int | None:
    """Bits per element of a tensor type; None for strings and unknown types."""
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    if data_type in (TensorProto.INT4, TensorProto.UINT4) or data_type == getattr(TensorProto, "FLOAT4E2M1", -1):
        return 4
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize) * 8
    except Exception:
        return None


def _elements(dims: object) -> int:
    return math.prod(int(d) for d in dims)  # type: ignore[union-attr]


class OnnxValidator:
    """Walks one model; ``run`` raises ModelRefused at the first problem."""

    def __init__(self, proto: onnx.ModelProto, name: str, file_size: int) -> None:
        self.proto = proto
        self.name = name
        self.file_size = file_size
        self.functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in proto.functions}

    # -- entry points ----------------------------------------------------------------------------

    def check_structure(self) -> None:
        """External data, loops, tensor sizes, constant-size allocations, function recursion."""
        if len(self.proto.training_info):
            raise ModelRefused(
                f"{self.name} has training_info graphs; a classifier for inference has none. Export it "
                "for inference only"
            )
        main = _Scope("the main graph")
        for vi in [*self.proto.graph.input, *self.proto.graph.value_info, *self.proto.graph.output]:
            main.shapes[vi.name] = _static_dims(vi)
        self._graph(self.proto.graph, main)
        for fn in self.functions.values():
            where = f"local function {fn.domain}:{fn.name}"
            for attr in fn.attribute_proto:
                self._attribute(attr, f"the default of attribute {attr.name!r}", where, None)
            self._nodes(fn.node, _Scope(where))
        self._no_recursion()

    def check_domains(self) -> None:
        """Every node of every graph and function: a standard operator or a call of a local function."""
        for node, where in self._all_nodes():
            if node.domain in STANDARD_DOMAINS:
                continue
            if (node.domain, node.op_type, getattr(node, "overload", "")) in self.functions:
                continue
            raise ModelRefused(
                f"{self.name}: {_describe(node)} in {where} is an operator of domain {node.domain!r}; only the "
                "standard ONNX operators (domain ai.onnx) are accepted, custom and ONNX Runtime contrib "
                "operators are not. Export the model with standard ONNX operators only"
            )

    # -- walking ---------------------------------------------------------------------------------

    def _graph(self, graph: onnx.GraphProto, scope: _Scope) -> None:
        for t in graph.initializer:
            self._tensor(t, "initializer", scope.where)
            if t.data_type in (TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT, TensorProto.DOUBLE) and (
                _elements(t.dims) <= _CONST_LIMIT
            ):
                with contextlib.suppress(Exception):  # malformed data: not a size, onnx.checker reports it
                    scope.consts[t.name] = numpy_helper.to_array(t)
            scope.shapes.setdefault(t.name, [int(d) for d in t.dims])
        for st in graph.sparse_initializer:
            self._sparse(st, "initializer", scope.where)
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            scope.shapes.setdefault(vi.name, _static_dims(vi))
        self._nodes(graph.node, scope)

    def _nodes(self, nodes: object, scope: _Scope) -> None:
        for node in nodes:  # type: ignore[attr-defined]
            if node.domain in STANDARD_DOMAINS and node.op_type in _LOOPS:
                raise ModelRefused(
                    f"{self.name}: {_describe(node)} in {scope.where} is a {node.op_type}; loops are refused "
                    "because how long they run cannot be known before running them (a constant or "
                    "input-dependent trip count can hang a worker), and image classifiers do not need them. "
                    "Export the model without loops (unrolled, or with the loop in the pre-processing)"
                )
            for attr in node.attribute:
                self._attribute(attr, f"attribute {attr.name!r} of {_describe(node)}", scope.where, (node, scope))
            if node.domain in STANDARD_DOMAINS:
                self._allocation(node, scope)
            if node.domain in STANDARD_DOMAINS and node.op_type == "Constant" and node.output:
                value = _constant_value(node)
                if value is not None:
                    scope.consts[node.output[0]] = value

    def _attribute(self, attr: AttributeProto, what: str, where: str, owner: tuple | None) -> None:
        if attr.type == AttributeProto.TENSOR:
            self._tensor(attr.t, what, where)
        elif attr.type == AttributeProto.TENSORS:
            for t in attr.tensors:
                self._tensor(t, what, where)
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            self._sparse(attr.sparse_tensor, what, where)
        elif attr.type == AttributeProto.SPARSE_TENSORS:
            for st in attr.sparse_tensors:
                self._sparse(st, what, where)
        elif attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for g in graphs:
                if owner is None:
                    raise ModelRefused(f"{self.name}: {what} in {where} is a graph; function defaults cannot be")
                node, scope = owner
                inner = _Scope(f"the {attr.name} of {_describe(node)} in {where}", dict(scope.consts),
                               dict(scope.shapes))
                self._graph(g, inner)

    def _tensor(self, t: TensorProto, what: str, where: str) -> None:
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            location = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise ModelRefused(
                f"{self.name} references external data for tensor {t.name!r} ({what} in {where}, "
                f"location {location!r}); external data is read from files outside the upload, so only "
                f"self-contained ONNX files are accepted: upload a self-contained ONNX file "
                f"(save_as_external_data=False, e.g. {_SELF_CONTAINED})"
            )
        if any(d < 0 for d in t.dims):
            raise ModelRefused(f"{self.name}: tensor {t.name!r} ({what} in {where}) has a negative dimension")
        n = _elements(t.dims)
        bits = _bits(t.data_type)
        if bits is None:
            return
        need = (n * bits + 7) // 8
        if need > self.file_size:
            raise ModelRefused(
                f"{self.name}: tensor {t.name!r} ({what} in {where}) declares {n:,} elements ({need:,} bytes) "
                f"but the whole file is {self.file_size:,} bytes; a tensor's data must be in the file, so this "
                "is refused as an allocation bomb"
            )
        if t.raw_data and len(t.raw_data) != need:
            raise ModelRefused(
                f"{self.name}: tensor {t.name!r} ({what} in {where}) declares {n:,} elements ({need:,} bytes) "
                f"but holds {len(t.raw_data):,} bytes of data; the file is damaged"
            )

    def _sparse(self, st: onnx.SparseTensorProto, what: str, where: str) -> None:
        self._tensor(st.values, f"values of the sparse {what}", where)
        self._tensor(st.indices, f"indices of the sparse {what}", where)
        if any(d < 0 for d in st.dims):
            raise ModelRefused(f"{self.name}: sparse tensor ({what} in {where}) has a negative dimension")
        n = _elements(st.dims)
        if n > MAX_ELEMENTS:
            raise ModelRefused(
                f"{self.name}: the sparse {what} in {where} is {list(st.dims)} ({n:,} elements) once ONNX Runtime "
                f"makes it dense, above the limit of {MAX_ELEMENTS:,}; refused as an allocation bomb"
            )

    def _allocation(self, node: onnx.NodeProto, scope: _Scope) -> None:
        """Refuse nodes whose constant size inputs make an output above MAX_ELEMENTS."""
        op = node.op_type

        def const(i: int) -> np.ndarray | None:
            return scope.consts.get(node.input[i]) if len(node.input) > i and node.input[i] else None

        def known(i: int) -> int:
            """A lower bound of input i's elements: its known dimensions (unknown ones count as 1)."""
            dims = scope.shapes.get(node.input[i]) if len(node.input) > i else None
            return math.prod(d for d in (dims or []) if d) or 1

        for attr in node.attribute:
            if attr.name in _PADDING_ATTRS and any(abs(v) > MAX_PADDING for v in attr.ints):
                raise ModelRefused(
                    f"{self.name}: attribute {attr.name!r} of {_describe(node)} in {scope.where} is "
                    f"{list(attr.ints)[:8]}; values above {MAX_PADDING:,} make outputs no image classifier needs "
                    "and are refused as an allocation bomb"
                )
        size: float | None = None
        shape = const(0) if op == "ConstantOfShape" else const(1) if op == "Expand" else None
        if shape is not None:
            size = _prod(shape)
        elif op == "Tile" and (reps := const(1)) is not None:
            size = _prod(reps) * known(0)
        elif op == "Range":
            start, limit, delta = const(0), const(1), const(2)
            if start is not None and limit is not None and delta is not None and float(delta) != 0:
                size = max(0.0, math.ceil((float(limit) - float(start)) / float(delta)))
        elif op in ("Resize", "Upsample"):
            scales = const(2) if op == "Resize" and len(node.input) > 2 else const(1)
            attr = next((a for a in node.attribute if a.name == "scales"), None)
            if scales is None and attr is not None:
                scales = np.array(list(attr.floats))
            sizes = const(3) if op == "Resize" else None
            if sizes is not None and sizes.size:
                size = _prod(sizes)
            elif scales is not None and scales.size:
                size = _prod(scales) * known(0)
        elif op == "Pad":
            pads = const(1)
            attr = next((a for a in node.attribute if a.name == "pads"), None)
            if pads is None and attr is not None:
                pads = np.array(list(attr.ints))
            if pads is not None and pads.size and pads.size % 2 == 0:
                rank = pads.size // 2
                dims = scope.shapes.get(node.input[0]) or []
                dims = dims if len(dims) == rank else [None] * rank
                size = math.prod(max(1, (d or 1) + int(pads.flat[i]) + int(pads.flat[i + rank]))
                                 for i, d in enumerate(dims))
        elif op == "OneHot" and (depth := const(1)) is not None and depth.size == 1:
            size = float(depth.flat[0]) * known(0)
        elif op in ("RandomNormal", "RandomUniform"):
            attr = next((a for a in node.attribute if a.name == "shape"), None)
            if attr is not None:
                size = _prod(np.array(list(attr.ints)))
        if size is not None and size > MAX_ELEMENTS:
            raise ModelRefused(
                f"{self.name}: {_describe(node)} in {scope.where} makes a tensor of at least {size:,.0f} elements "
                f"from constant sizes, above the limit of {MAX_ELEMENTS:,}; refused as an allocation bomb "
                "(a classifier's constant-size tensors are far smaller)"
            )

    def _all_nodes(self) -> Iterator[tuple[onnx.NodeProto, str]]:
        def walk(nodes: object, where: str) -> Iterator[tuple[onnx.NodeProto, str]]:
            for node in nodes:  # type: ignore[attr-defined]
                yield node, where
                for attr in node.attribute:
                    graphs = [attr.g] if attr.type == AttributeProto.GRAPH else (
                        list(attr.graphs) if attr.type == AttributeProto.GRAPHS else [])
                    for g in graphs:
                        yield from walk(g.node, f"the {attr.name} of {_describe(node)} in {where}")

        yield from walk(self.proto.graph.node, "the main graph")
        for fn in self.functions.values():
            yield from walk(fn.node, f"local function {fn.domain}:{fn.name}")

    def _no_recursion(self) -> None:
        calls: dict[tuple, set[tuple]] = {}
        for key, fn in self.functions.items():
            targets: set[tuple] = set()
            stack = list(fn.node)
            while stack:
                node = stack.pop()
                ref = (node.domain, node.op_type, getattr(node, "overload", ""))
                if ref in self.functions:
                    targets.add(ref)
                for attr in node.attribute:
                    if attr.type == AttributeProto.GRAPH:
                        stack.extend(attr.g.node)
                    elif attr.type == AttributeProto.GRAPHS:
                        for g in attr.graphs:
                            stack.extend(g.node)
            calls[key] = targets
        state: dict[tuple, int] = {}  # 1: on the current path, 2: done

        def visit(key: tuple) -> None:
            state[key] = 1
            for callee in calls[key]:
                if state.get(callee) == 1:
                    raise ModelRefused(
                        f"{self.name}: local function {key[0]}:{key[1]} calls itself (through "
                        f"{callee[0]}:{callee[1]}); recursive functions are refused (they never finish inlining)"
                    )
                if callee not in state:
                    visit(callee)
            state[key] = 2

        for key in calls:
            if key not in state:
                visit(key)


def _prod(values: np.ndarray) -> float:
    return float(np.prod(np.abs(values.astype(np.float64)))) if values.size else 1.0


def _static_dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR and _elements(a.t.dims) <= _CONST_LIMIT:
            try:
                return numpy_helper.to_array(a.t)
            except Exception:  # malformed data: not a usable size, onnx.checker reports it
                return None
        if a.name == "value_int":
            return np.array(a.i)
        if a.name == "value_ints":
            return np.array(list(a.ints))
        if a.name == "value_float":
            return np.array(a.f)
        if a.name == "value_floats":
            return np.array(list(a.floats))
    return None


def _describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (output {node.output[0]!r})" \
        if node.output else f"an unnamed {node.op_type} node"


def validate_onnx(proto: onnx.ModelProto, name: str, file_size: int) -> None:
    """All static checks, in the order whose messages are most useful: structure (external data,
    loops, sizes) first, then the opset imports ONNX Runtime provides (``check_opsets``), then the
    domain of every node in every graph and function.

    Raises:
        ModelRefused: naming the first problem and what to do about it.
    """
    from etm.models.onnx_support import check_opsets

    v = OnnxValidator(proto, name, file_size)
    v.check_structure()
    check_opsets(proto, name)
    v.check_domains()
