"""Static validators for uploaded model files (``pt2_validate``, ``onnx_validate``): the hostile corpus
of ``tests/helpers/hostile_models.py`` really escapes without them (proven in throwaway
subprocesses), every payload is refused with ModelRefused and never runs, and legitimate exports
(dynamic-shape arithmetic, Swin, guards of dynamic image sizes, Core ATen, ONNX ``If`` and local
functions) still load."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from etm.errors import ModelRefused
from etm.models import pt2_validate as pv
from etm.models.loader import load_model
from tests.helpers import hostile_models as H
from tests.helpers.faulty import OPSET, conv_net
from tests.helpers.tiny import META, TinyNet, export

SECRET = b"TOPSECRET-0123456789"

# -- the corpus is real -------------------------------------------------------------------------

_RAW_PT2 = """
import json, sys, torch
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        scores = torch.export.load(path).module()(torch.rand(2, 3, 32, 32))
        out[name] = {"ran": True, "scores": scores[0].round().to(torch.uint8).tolist()}
    except Exception as exc:
        out[name] = {"ran": False, "error": repr(exc)[:300]}
print(json.dumps(out))
"""

_RAW_ONNX = """
import json, sys, numpy as np, onnx, onnxruntime as ort
out = {}
for name, (path, mode) in json.loads(sys.argv[1]).items():
    try:
        src = onnx.load(path, load_external_data=False).SerializeToString() if mode == "bytes" else path
        sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        out[name] = sess.run(None, {"x": np.zeros((2, 3, 32, 32), np.float32)})[0][0].tobytes().hex()
    except Exception as exc:
        out[name] = "error: " + str(exc)[:300]
print(json.dumps(out))
"""

_RAW_LOOP = """
import sys, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
sess.run(None, {"x": np.zeros((2, 3, 32, 32), np.float32)})
print("blank probe passed", flush=True)
sess.run(None, {"x": np.full((2, 3, 32, 32), 0.5, np.float32)})
print("real image finished", flush=True)
"""


def _run(code: str, *args: str, cwd: Path, timeout: float = 180) -> str:
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_pt2_payloads_escape_without_the_validator(tmp_path: Path) -> None:
    """Straight to torch (``torch.export.load`` + ``module()`` + a forward), every marker payload runs
    its Python, ``from_file`` reads the secret into the scores and creates a file."""
    secret, created = tmp_path / "secret.txt", tmp_path / "created.bin"
    secret.write_bytes(SECRET)
    markers = {name: tmp_path / f"marker_{name}" for name in H.PT2_MARKER_PAYLOADS}
    files = {name: str(build(tmp_path, markers[name])) for name, build in H.PT2_MARKER_PAYLOADS.items()}
    files["from_file_read"] = str(H.pt2_from_file_read(tmp_path, secret))
    files["from_file_create"] = str(H.pt2_from_file_create(tmp_path, created))
    result = json.loads(_run(_RAW_PT2, json.dumps(files), cwd=tmp_path))
    assert {name for name, m in markers.items() if m.read_text() == "pwned"} == set(markers), result
    assert result["from_file_read"]["scores"] == list(SECRET[:8]), result["from_file_read"]
    assert created.stat().st_size == 4096
    # The sympy, guard and forward_arg_names payloads are stealthy: the program runs as usual.
    assert all(result[n]["ran"] for n in ("sympy_input", "sympy_sym_int_value", "guards_code", "forward_arg_names"))


def test_onnx_external_data_leaks_without_the_validator(tmp_path: Path) -> None:
    """ONNX Runtime copies the secret's first 8 bytes into the scores from every place: subgraph ones
    from the model's bytes (relative to the working directory, as this service loads models), the
    top-level ones from a path (ONNX Runtime refuses those from bytes)."""
    (tmp_path / "secret.bin").write_bytes(SECRET)
    top_level = {"initializer", "constant", "function_constant"}
    files = {
        where: (str(H.onnx_external_data(tmp_path, "secret.bin", where)), "path" if where in top_level else "bytes")
        for where in H.ONNX_EXTERNAL_DATA_PLACES
    }
    result = json.loads(_run(_RAW_ONNX, json.dumps(files), cwd=tmp_path))
    assert result == {where: SECRET[:8].hex() for where in H.ONNX_EXTERNAL_DATA_PLACES}


def test_input_dependent_loop_passes_a_blank_probe_then_hangs(tmp_path: Path) -> None:
    path = H.onnx_loop_input_dependent(tmp_path)
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run([sys.executable, "-c", _RAW_LOOP, str(path)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=6)
    stdout = hung.value.stdout or b""
    assert "blank probe passed" in (stdout.decode() if isinstance(stdout, bytes) else stdout)


# -- every payload is refused -------------------------------------------------------------------

_PT2_REFUSALS = {
    "sympy_input": "tensor_values.x.sizes[0].as_expr.expr_str is ",
    "sympy_intermediate": "tensor_values.relu.sizes[0].as_expr.expr_str is ",
    "sympy_sym_int_value": "sym_int_values.mul.as_expr.expr_str is ",
    "guards_code": "guards_code[0] is ",
    "placeholder_name": "graph_module.graph.inputs[4] (a placeholder name) is ",
    "forward_arg_names": "signature.forward_arg_names is ",
    "fqn": "model_weights_config.json: the tensor name is ",
    "node_name": "not a plain Python identifier",
    "python_callable": "calls 'torch.os.mkdir', which is not one of the PyTorch operators accepted",
    "range_constraint": "models/model.json:range_constraints",
}


@pytest.mark.parametrize("name", sorted(_PT2_REFUSALS))
def test_pt2_code_payload_is_refused_and_never_runs(tmp_path: Path, name: str) -> None:
    build = {**H.PT2_MARKER_PAYLOADS, **H.PT2_STOPPED_BY_TORCH}[name]
    marker = tmp_path / "marker"
    path = build(tmp_path, marker)
    with pytest.raises(ModelRefused) as err:
        load_model(path, device="cpu")
    msg = str(err.value)
    assert msg.startswith(path.name) and _PT2_REFUSALS[name] in msg, msg
    assert "re-export" in msg.lower() or "operators accepted" in msg
    assert not marker.exists()


def test_sympy_refusal_says_why_and_what_to_do(tmp_path: Path) -> None:
    path = H.pt2_sympy_exec(tmp_path, tmp_path / "marker")
    with pytest.raises(ModelRefused) as err:
        load_model(path, device="cpu")
    assert str(err.value).endswith(
        "which is not a symbolic shape expression as torch.export writes them (Subscript is not allowed). torch would "
        "evaluate it as Python (sympy.sympify); the file was edited or made by another tool. Re-export the model "
        "with torch.export.export and torch.export.save"
    )


def test_pt2_file_operators_are_refused(tmp_path: Path) -> None:
    secret, created = tmp_path / "secret.txt", tmp_path / "created.bin"
    secret.write_bytes(SECRET)
    for path in (H.pt2_from_file_read(tmp_path, secret), H.pt2_from_file_create(tmp_path, created)):
        with pytest.raises(ModelRefused, match=r"calls 'torch\.ops\.aten\.from_file\.default', which is not one of "
                                               r"the PyTorch operators accepted for classifiers"):
            load_model(path, device="cpu")
    assert not created.exists()


@pytest.mark.parametrize("target", ["torch.ops.aten._unsafe_index.Tensor", "torch.ops.aten.clone.default"])
def test_unlisted_operator_is_refused_listed_one_loads(tmp_path: Path, target: str) -> None:
    path = H.pt2_unlisted_op(tmp_path, target)
    if "_unsafe" in target:
        with pytest.raises(ModelRefused, match="_unsafe_index"):
            load_model(path, device="cpu")
    else:  # the same graph with an accepted operator in that place is fine
        assert load_model(path, device="cpu").logits(torch.rand(3, 3, 32, 32)).shape == (3, 2)


def test_deserialized_graph_is_checked_again(tmp_path: Path) -> None:
    """Defence in depth: a program that slipped past the JSON checks is refused after deserialization."""
    ep = torch.export.export(TinyNet().eval(), (torch.rand(2, 3, 32, 32),))
    pv.check_program(ep, "ok.pt2")
    node = next(n for n in ep.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.from_file.default
    with pytest.raises(ModelRefused, match="from_file"):
        pv.check_program(ep, "bad.pt2")
    node.target = print
    with pytest.raises(ModelRefused, match="which is not a PyTorch aten/prims operator"):
        pv.check_program(ep, "bad.pt2")


def test_pt2_archive_with_duplicate_members_or_keys_is_refused(tmp_path: Path) -> None:
    src = H.pt2_dynamic_arithmetic(tmp_path)
    dup = tmp_path / "dup.pt2"
    with zipfile.ZipFile(src) as zin:
        members = [(i.filename, zin.read(i)) for i in zin.infolist()]
    with zipfile.ZipFile(dup, "w") as zout:
        for name, data in members:
            zout.writestr(name, data)
        zout.writestr(*next(m for m in members if m[0].endswith("models/model.json")))  # a second copy
    with pytest.raises(ModelRefused, match="two archive members with the same name"):
        load_model(dup, device="cpu")
    with pytest.raises(ModelRefused, match="repeats the JSON key 'expr_str'"):
        pv.load_json(b'{"expr_str": "s0", "expr_str": "__import__(1)"}', "m.json", "x.pt2")


_ONNX_REFUSALS = {
    **{f"external_{w}": "references external data for tensor" for w in H.ONNX_EXTERNAL_DATA_PLACES},
    "loop_bomb": "Loop node (output 'v_final') in the main graph is a Loop; loops are refused",
    "loop_input_dependent": "is a Loop; loops are refused",
    "scan_bomb": "Scan node (output 's_final') in the main graph is a Scan; loops are refused",
    "custom_domain": "imports operator domain 'com.example.custom'",
    "custom_domain_undeclared": "Magic node (output 't_out') in the then_branch of If node (output 'custom') in the "
                                "main graph is an operator of domain 'com.example.custom'",
    "contrib_domain": "is an operator of domain 'com.microsoft'; only the standard ONNX operators",
    **{f"allocation_{op}": "refused as an allocation bomb" for op in H.ONNX_ALLOCATION_BOMBS},
}


def _onnx_payload(name: str, tmp: Path) -> Path:
    if name.startswith("external_"):
        return H.onnx_external_data(tmp, "secret.bin", name[len("external_"):])
    if name.startswith("allocation_"):
        return H.onnx_allocation_bomb(tmp, name[len("allocation_"):])
    return {
        "loop_bomb": lambda: H.onnx_loop_bomb(tmp),
        "loop_input_dependent": lambda: H.onnx_loop_input_dependent(tmp),
        "scan_bomb": lambda: H.onnx_scan_bomb(tmp),
        "custom_domain": lambda: H.onnx_custom_domain(tmp),
        "custom_domain_undeclared": lambda: H.onnx_custom_domain(tmp, imported=False),
        "contrib_domain": lambda: H.onnx_custom_domain(tmp, "com.microsoft"),
    }[name]()


@pytest.mark.parametrize("name", sorted(_ONNX_REFUSALS))
def test_onnx_payload_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)  # where ONNX Runtime would find the secret
    path = _onnx_payload(name, tmp_path)
    with pytest.raises(ModelRefused) as err:
        load_model(path, threads=1)
    assert _ONNX_REFUSALS[name] in str(err.value), str(err.value)


def test_subgraph_external_data_message(tmp_path: Path) -> None:
    path = H.onnx_subgraph_external_data(tmp_path, "secret.bin")
    with pytest.raises(ModelRefused) as err:
        load_model(path)
    assert str(err.value) == (
        "onnx_external_data_if_initializer.onnx references external data for tensor 't_leak' (initializer in the "
        "then_branch of If node (output 'leak') in the main graph, location 'secret.bin'); external data is read "
        "from files outside the upload, so only self-contained ONNX files are accepted: upload a self-contained "
        "ONNX file (save_as_external_data=False, e.g. onnx.save_model(model, path, save_as_external_data=False))"
    )


def test_recursive_local_function_is_refused(tmp_path: Path) -> None:
    proto = onnx.load(str(conv_net(tmp_path / "base.onnx")))
    fn = helper.make_function("com.example.local", "Again", ["a"], ["b"],
                              [helper.make_node("Again", ["a"], ["b"], domain="com.example.local")],
                              [helper.make_opsetid("", OPSET), helper.make_opsetid("com.example.local", 1)])
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("com.example.local", 1))
    proto.graph.node.append(helper.make_node("Again", ["logits"], ["unused"], domain="com.example.local"))
    path = tmp_path / "rec.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelRefused, match="local function com.example.local:Again calls itself"):
        load_model(path)


# -- legitimate exports still load --------------------------------------------------------------


def test_pt2_with_dynamic_shape_arithmetic_loads(tmp_path: Path) -> None:
    """``x.reshape(b * 2, -1)`` and ``view(x.shape[0], -1)`` on a dynamic batch: ``operator.mul`` on
    symbolic sizes, which the old any-aten check refused."""
    path = H.pt2_dynamic_arithmetic(tmp_path)
    program = json.loads(zipfile.ZipFile(path).read(f"{path.stem}/models/model.json"))
    assert "_operator.mul" in {n["target"] for n in program["graph_module"]["graph"]["nodes"]}
    model = load_model(path, device="cpu")
    assert model.logits(torch.rand(3, 3, 32, 32)).shape == (3, 2)


def test_small_swin_pt2_loads_and_agrees_with_eager(tmp_path: Path) -> None:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    net = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                          num_classes=2).eval()
    path = export(net, tmp_path / "swin.pt2", "pt2", size=32)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ref = net((x - 0.5) / 0.25)
    torch.testing.assert_close(load_model(path, device="cpu").logits(x), ref, atol=1e-4, rtol=1e-4)


def test_pt2_with_guards_of_dynamic_image_size_and_core_aten_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(net, (torch.rand(2, 3, 32, 32),),
                             dynamic_shapes={"x": {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}})
    assert ep._guards_code  # e.g. "(1 + (((-1) + L['x'].size()[3]) // 2)) != 1"
    x = torch.rand(2, 3, 32, 32)
    for name, program in (("guards.pt2", ep), ("core_aten.pt2", ep.run_decompositions())):
        torch.export.save(program, str(tmp_path / name))
        (tmp_path / f"{name}.json").write_text(json.dumps(META))
        got = load_model(tmp_path / name, device="cpu").logits(x)
        with torch.no_grad():
            torch.testing.assert_close(got, net((x - 0.5) / 0.25), atol=1e-5, rtol=1e-5)


def test_onnx_with_if_and_a_local_function_loads(tmp_path: Path) -> None:
    """``If`` whose branches pass the checks and a model-local function of standard operators are fine."""
    proto = onnx.load(str(conv_net(tmp_path / "base.onnx")))
    g = proto.graph
    for node in g.node:
        node.output[:] = ["gemm" if o == "logits" else o for o in node.output]
    zeros = numpy_helper.from_array(np.zeros((1, 2), np.float32), "z")
    branch = helper.make_graph([helper.make_node("Constant", [], ["b_out"], value=zeros)], "b", [],
                               [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [1, 2])])
    fn = helper.make_function("com.example.local", "AddZero", ["a", "z"], ["b"],
                              [helper.make_node("Add", ["a", "z"], ["b"])], [helper.make_opsetid("", OPSET)])
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("com.example.local", 1))
    g.node.extend([
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c")),
        helper.make_node("If", ["cond"], ["if_out"], then_branch=branch, else_branch=branch),
        helper.make_node("AddZero", ["gemm", "if_out"], ["logits"], domain="com.example.local"),
    ])
    path = tmp_path / "if_fn.onnx"
    onnx.save(proto, str(path))
    (tmp_path / "if_fn.onnx.json").write_text(json.dumps(META))
    ref = load_model(tmp_path / "base.onnx").logits(torch.rand(2, 3, 32, 32) * 0 + 0.5)
    got = load_model(path).logits(torch.rand(2, 3, 32, 32) * 0 + 0.5)
    torch.testing.assert_close(got, ref)


def test_onnx_legacy_export_with_modules_as_functions_loads(tmp_path: Path) -> None:
    """The legacy exporter's ``export_modules_as_functions`` writes model-local functions (domains such as
    ``torch.nn.modules.conv``); their bodies are standard operators, so the model loads."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "functions.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, 32, 32),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17,
                      export_modules_as_functions={torch.nn.Conv2d, torch.nn.ReLU})
    domains = {f.domain for f in onnx.load(str(path)).functions}
    assert domains == {"torch.nn.modules.conv", "torch.nn.modules.activation"}
    (tmp_path / "functions.onnx.json").write_text(json.dumps(META))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path).logits(x), net((x - 0.5) / 0.25), atol=1e-5, rtol=1e-5)


# -- grammars -----------------------------------------------------------------------------------

_REAL_EXPRS = [  # as torch.export writes them (torchvision classifiers, dynamic batch and image size)
    "Symbol('s77', positive=True, integer=True)",
    "Mul(Integer(2), Symbol('s77', positive=True, integer=True))",
    "Min(Integer(32), Mul(Integer(32), Symbol('s77', positive=True, integer=True)))",
    "Mul(Integer(16), Max(Integer(1), FloorDiv(Symbol('s0', positive=True, integer=True), Integer(4))), "
    "Max(Integer(1), FloorDiv(Symbol('s53', positive=True, integer=True), Integer(4))))",
    "Add(FloorDiv(Add(Symbol('s0', positive=True, integer=True), Integer(-1)), Integer(4)), Integer(1))",
    "StrictLessThan(Symbol('u0', integer=True), Integer(4096))",
    "2*s0 + 1", "s0 // 4", "Mod(s0, 2)", "Eq(PythonMod(s1, 2), 0)", "CeilToInt(IntTrueDiv(s0, 2))",
]
_EVIL_EXPRS = [
    "__import__('os').system('id')",
    "(__import__('os'), Symbol('s0'))[1]",
    "Symbol('__import__')",
    "Symbol('s0', positive=__import__('os'))",
    "Symbol('s0').__class__",
    "Pow(Integer(10), Integer(1000000000))",
    "PowByNatural(s0, 10000000000)",
    "s0 ** 10000000000",
    "Integer(10000000000000000000000000)",
    "lambda: 0",
    "[s0 for s0 in ()]",
    "Add(s0, 'x')",
    "S.true",
    "eval('1')",
    "Integer(True)",
    "x",
    "(" * 300 + "s0" + ")" * 300,
    "s0 " * 10000,
]


@pytest.mark.parametrize("text", _REAL_EXPRS)
def test_real_sym_expressions_pass(text: str) -> None:
    pv.check_sym_expr(text, "expr_str", "m.pt2")


@pytest.mark.parametrize("text", _EVIL_EXPRS)
def test_evil_sym_expressions_are_refused(text: str) -> None:
    with pytest.raises(ModelRefused, match="m.pt2: expr_str is .* not a symbolic shape expression"):
        pv.check_sym_expr(text, "expr_str", "m.pt2")


_REAL_GUARDS = [
    "(1 + (((-1) + L['x'].size()[3]) // 2)) != 1",
    "L['x'].size()[2] >= 4",
    "torch.sym_max(1, L['x'].size()[3] // 4) < torch.sym_max(1, L['x'].size()[3] // 4)*torch.sym_max(1, "
    "L['x'].size()[2] // 4)",
    "1 + (((-1) + L['x'].size()[3]) // 2) >= 1 and 1 + (((-1) + L['x'].size()[2]) // 2) >= 1",
    "(L['x'].size()[0] % (L['x'].size()[0]*(L['x'].size()[3] // 4))) != 0",
]
_EVIL_GUARDS = [
    "__import__('os').system('id') > 0",
    "L['x'].size.__globals__",
    "L['x'].__class__",
    "L['x'].size()[0].__class__ == 1",
    "L['x'].size(__import__('os'))[0] > 1",
    "L['x; import os'].size()[0] > 1",
    "torch.load('x')",
    "math.floor.__call__(1)",
    "getattr(L, 'x')",
    "L['x'].size()[0] > 1)\nimport os\n(",
    "'a' == 'a'",
]


@pytest.mark.parametrize("text", _REAL_GUARDS)
def test_real_guards_pass(text: str) -> None:
    pv.check_guard(text, "guards_code[0]", "m.pt2")


@pytest.mark.parametrize("text", _EVIL_GUARDS)
def test_evil_guards_are_refused(text: str) -> None:
    with pytest.raises(ModelRefused, match="not a shape guard as torch.export writes them"):
        pv.check_guard(text, "guards_code[0]", "m.pt2")


def test_names_fqns_and_targets() -> None:
    assert pv.is_identifier("p_features_0_weight") and pv.is_identifier("_x1")
    for bad in ("x=1", "a b", "1x", "class", "x\n", "ｘ", "", "a" * 300, None):
        assert not pv.is_identifier(bad), bad
    assert pv.is_fqn("features.0.weight") and pv.is_fqn("trunk_output.block1.block1-0.proj.0.weight")
    for bad in ('fc.w")', "a..b", "a.", "a b", "a'b", "a\\b", ""):
        assert not pv.is_fqn(bad), bad
    for ok in ("torch.ops.aten.conv2d.default", "torch.ops.aten._native_batch_norm_legit_no_training.default",
               "torch.ops.aten.scaled_dot_product_attention.default", "_operator.mul", "torch.sym_max",
               "torch.ops.aten.sym_size.int", "torch.ops.prims.convert_element_type.default"):
        pv.check_target(ok, "target", "m.pt2")
    for bad in ("torch.ops.aten.from_file.default", "torch.ops.aten.set_.source_Storage", "torch.os.system",
                "torch.ops.aten.add.out", "torch.ops.higher_order.cond", "#custom:op", "torch.load",
                "torch.ops.aten._unsafe_index_put.default", "torch.ops.aten.rand.default", "_operator.pow",
                "torch.ops.profiler._record_function_enter_new.default", "torch.ops.c10d.allreduce_.default",
                "math.exp", 3):
        with pytest.raises(ModelRefused, match="not one of the PyTorch operators accepted"):
            pv.check_target(bad, "target", "m.pt2")
