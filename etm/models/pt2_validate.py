"""Static checks of a ``.pt2`` archive's JSON, before torch's deserializer sees it (defence in depth
under the OS sandbox that runs every model load).

torch.export's deserializer trusts its input. Reading ``torch/_export/serde/serialize.py``,
``torch/export/_unlift.py`` and ``torch/fx/graph.py`` (torch 2.14) shows these places where text
from the file becomes code:

- every ``expr_str`` (symbolic sizes, strides and offsets in ``tensor_meta``, ``sym_int_values``,
  ``sym_bool_values``, ``sym_float_values``) goes to ``sympy.sympify``, which is ``eval``;
- ``guards_code`` entries are compiled with ``exec`` by ``ExportedProgram.module()`` and run on
  every forward call;
- torch.fx writes placeholder names, the root module's ``forward_arg_names`` and parameter / buffer
  FQN parts (inside ``getattr(x, "<part>")``) verbatim into the generated Python source of the
  GraphModule, which it ``exec``s (call_function node names are sanitised by the code generator,
  placeholders and FQNs are not);
- node ``target`` strings are resolved with ``getattr`` on ``torch``, ``math`` and ``operator`` and any
  callable found is called at run time (``torch.os.system`` resolves); aten operators include
  ``aten.from_file``, which reads and creates files;
- pytree specs (``in_spec`` / ``out_spec``) may hold ``{"__enum__": ...}`` objects that import modules;
- node metadata (``stack_trace``, ``nn_module_stack``, ``source_fn_stack``, ``from_node``,
  ``custom``) is parsed into Python objects with attribute look-ups on ``torch``.

So: ``expr_str`` must match the grammar torch.export emits (sympy ``srepr`` of integer arithmetic on
size symbols, see ``check_sym_expr``), guards a small Python grammar (``check_guard``), every name an
ASCII identifier, every FQN dotted identifier parts, every node target an operator in
``ALLOWED_OPS`` (or integer arithmetic on symbolic sizes), pytree specs plain tuples/lists/dicts,
and node metadata is dropped before torch sees it (``module_calls`` reads the module keys of
``nn_module_stack`` from the raw JSON as plain, pattern-checked text, for ``layer: torchcam``; the
types named there are never resolved). The program is then deserialized from the
checked dict itself (never re-read from the file), and the deserialized graph is checked again
(``check_program``).

Nothing is evaluated here: expressions are parsed with ``ast.parse`` and walked.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Callable, Iterator
from typing import Any

from etm.errors import ModelRefused

MAX_JSON_BYTES = 256 << 20
MAX_EXPR_CHARS = 20_000
MAX_INT = 1 << 63

_REEXPORT = "re-export the model with torch.export.export and torch.export.save"

# -- grammar of symbolic expressions ------------------------------------------------------------

# Size symbols torch.export creates: s<N> (backed sizes), u<N> (unbacked ints), zf<N>/zuf<N> (floats).
_SYMBOL = re.compile(r"(?:s|u|zf|zuf)[0-9]{1,9}\Z")
# sympy / torch.utils._sympy.functions classes for integer arithmetic, comparisons and logic, as
# ``sympy.srepr`` spells them. Not Pow / PowByNatural / LShift (10**10**9 is a denial of service),
# not the float functions: a classifier's shapes never need them.
_SYMPY_FUNCTIONS = frozenset({
    "Add", "Mul", "FloorDiv", "Mod", "PythonMod", "CleanDiv", "CeilDiv", "CeilToInt", "FloorToInt",
    "IntTrueDiv", "TruncToInt", "Max", "Min", "Eq", "Ne", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not",
})
_SYMPY_ATOMS = frozenset({"true", "false"})
_ASSUMPTIONS = frozenset({
    "integer", "positive", "nonnegative", "negative", "nonpositive", "real", "finite", "nonzero",
    "extended_real", "rational",
})
_INFIX_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class _Bad(Exception):
    """Internal: what in the expression broke the grammar (becomes part of the ModelRefused message)."""


def _parse(text: object, what: str) -> ast.expr:
    if not isinstance(text, str):
        raise _Bad(f"{what} is a {type(text).__name__}, not text")
    if len(text) > MAX_EXPR_CHARS:
        raise _Bad(f"{what} is {len(text)} characters long (at most {MAX_EXPR_CHARS})")
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Bad(f"{what} does not parse ({type(exc).__name__})") from None


def _int_literal(node: ast.expr) -> int:
    negative = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    inner = node.operand if negative and isinstance(node, ast.UnaryOp) else node
    if not (isinstance(inner, ast.Constant) and type(inner.value) is int):
        raise _Bad("an integer literal was expected")
    if inner.value >= MAX_INT:
        raise _Bad(f"the integer {inner.value} is out of range")
    return -inner.value if negative else inner.value


def _sym_node(node: ast.expr) -> None:
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise _Bad("only calls of sympy functions by name are allowed")
        fn = node.func.id
        if fn == "Symbol":
            if len(node.args) != 1 or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and _SYMBOL.match(node.args[0].value)
            ):
                raise _Bad("Symbol(...) must name a size symbol such as 's0' or 'u3'")
            for kw in node.keywords:
                if kw.arg not in _ASSUMPTIONS or not (
                    isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool)
                ):
                    raise _Bad("Symbol(...) takes only True/False assumptions such as integer=True")
            return
        if node.keywords:
            raise _Bad(f"{fn}(...) takes no keyword arguments")
        if fn == "Integer":
            if len(node.args) != 1:
                raise _Bad("Integer(...) takes one integer")
            _int_literal(node.args[0])
            return
        if fn == "Rational":
            if len(node.args) != 2:
                raise _Bad("Rational(...) takes two integers")
            for a in node.args:
                _int_literal(a)
            return
        if fn not in _SYMPY_FUNCTIONS:
            raise _Bad(f"{fn}(...) is not one of the integer functions torch.export writes")
        if not node.args:
            raise _Bad(f"{fn}() has no arguments")
        for a in node.args:
            _sym_node(a)
        return
    if isinstance(node, ast.Name):
        if not (_SYMBOL.match(node.id) or node.id in _SYMPY_ATOMS):
            raise _Bad(f"the name {node.id!r} is not a size symbol")
        return
    if isinstance(node, ast.Constant):
        if type(node.value) is not int or abs(node.value) >= MAX_INT:
            raise _Bad(f"the constant {node.value!r} is not an integer in range")
        return
    # The infix spelling (str() of a sympy expression) is also accepted: same operations.
    if isinstance(node, ast.BinOp) and isinstance(node.op, _INFIX_BINOPS):
        _sym_node(node.left)
        _sym_node(node.right)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _sym_node(node.operand)
        return
    if isinstance(node, ast.Compare) and all(isinstance(op, _COMPARE_OPS) for op in node.ops):
        for a in (node.left, *node.comparators):
            _sym_node(a)
        return
    raise _Bad(f"{type(node).__name__} is not allowed")


def check_sym_expr(text: object, field: str, fname: str) -> None:
    """Refuse ``text`` unless it is an integer symbolic-shape expression: ``Symbol('s0', integer=True,
    positive=True)``, ``Integer(-1)``, ``Add/Mul/FloorDiv/Mod/PythonMod/CleanDiv/CeilDiv/CeilToInt/
    FloorToInt/IntTrueDiv/TruncToInt/Max/Min`` of those, comparisons (``Eq``, ``Ne``,
    ``StrictLessThan``...) and ``And/Or/Not``; or the same in infix form (``2*s0 + 1``, ``s0 // 4``)."""
    try:
        _sym_node(_parse(text, "it"))
    except _Bad as exc:
        raise ModelRefused(
            f"{fname}: {field} is {_show(text)}, which is not a symbolic shape expression as torch.export "
            f"writes them ({exc}). torch would evaluate it as Python (sympy.sympify); the file was edited "
            f"or made by another tool. {_REEXPORT.capitalize()}"
        ) from None


# -- grammar of guards --------------------------------------------------------------------------

_GUARD_TORCH_FUNCS = frozenset({"sym_max", "sym_min", "sym_not", "sym_ite"})
_GUARD_MATH_FUNCS = frozenset({"floor", "ceil", "trunc"})
_GUARD_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset"})


def _is_input(node: ast.expr) -> bool:
    """``L['name']``: how guards refer to an input."""
    return (
        isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "L"
        and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
        and is_identifier(node.slice.value)
    )


def _guard_node(node: ast.expr) -> None:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
        for v in node.values:
            _guard_node(v)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        _guard_node(node.operand)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _INFIX_BINOPS):
        _guard_node(node.left)
        _guard_node(node.right)
    elif isinstance(node, ast.Compare) and all(isinstance(op, _COMPARE_OPS) for op in node.ops):
        for v in (node.left, *node.comparators):
            _guard_node(v)
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, bool) or abs(node.value) >= MAX_INT:
            raise _Bad(f"the constant {node.value!r} is not an integer in range")
    elif _is_input(node):
        pass
    elif isinstance(node, ast.Subscript):  # L['x'].size()[2]
        if not (isinstance(node.slice, ast.Constant) and type(node.slice.value) is int):
            raise _Bad("only integer indices are allowed")
        _guard_size_call(node.value)
    elif isinstance(node, ast.Call):
        func = node.func
        if node.keywords or not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            _guard_size_call(node)  # L['x'].storage_offset()
            return
        allowed = {"torch": _GUARD_TORCH_FUNCS, "math": _GUARD_MATH_FUNCS}.get(func.value.id, frozenset())
        if func.attr not in allowed or not node.args:
            raise _Bad(f"the call {func.value.id}.{func.attr}(...) is not allowed")
        for a in node.args:
            _guard_node(a)
    else:
        raise _Bad(f"{type(node).__name__} is not allowed")


def _guard_size_call(node: ast.expr) -> None:
    if not (
        isinstance(node, ast.Call) and not node.args and not node.keywords
        and isinstance(node.func, ast.Attribute) and node.func.attr in _GUARD_TENSOR_METHODS
        and _is_input(node.func.value)
    ):
        raise _Bad("only L['<input>'].size()/.stride()/.storage_offset() may be called on inputs")


def check_guard(text: object, field: str, fname: str) -> None:
    """Refuse ``text`` unless it is a shape guard as torch.export writes them: integer arithmetic and
    comparisons on ``L['x'].size()[i]``, ``torch.sym_max/sym_min``, ``and``/``or``/``not``."""
    try:
        _guard_node(_parse(text, "it"))
    except _Bad as exc:
        raise ModelRefused(
            f"{fname}: {field} is {_show(text)}, which is not a shape guard as torch.export writes them "
            f"({exc}). torch compiles guards into Python (exec); the file was edited or made by another "
            f"tool. {_REEXPORT.capitalize()}"
        ) from None


# -- names -------------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
# Module names may hold '-' (torchvision's RegNet: 'block1-0'); never quotes, backslashes or spaces.
_FQN_PART = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")


def is_identifier(name: object) -> bool:
    """An ASCII Python identifier that is not a keyword (torch.fx puts such names into source code)."""
    return isinstance(name, str) and bool(_IDENT.match(name)) and not keyword.iskeyword(name)


def is_fqn(name: object, allow_empty: bool = False) -> bool:
    """Dotted module path such as ``features.0.weight``: parts of letters, digits, '_' and '-'."""
    if not isinstance(name, str):
        return False
    if name == "":
        return allow_empty
    parts = name.split(".")
    return len(parts) <= 64 and all(_FQN_PART.match(p) for p in parts)


def _check_name(name: object, field: str, fname: str) -> None:
    if not is_identifier(name):
        raise ModelRefused(
            f"{fname}: {field} is {_show(name)}, not a plain Python identifier; torch.fx writes these names "
            f"into generated Python source, so only letters, digits and '_' are accepted. {_REEXPORT}"
        )


def _check_fqn(name: object, field: str, fname: str, allow_empty: bool = False) -> None:
    if not is_fqn(name, allow_empty):
        raise ModelRefused(
            f"{fname}: {field} is {_show(name)}, not a module path such as 'features.0.weight'; torch.fx "
            f"writes these paths into generated Python source, so only letters, digits, '_', '-' and '.' are "
            f"accepted. {_REEXPORT}"
        )


# -- operators ---------------------------------------------------------------------------------

# The operators a classifier's exported program uses: the training IR that torch.export.export emits
# (conv2d, batch_norm, linear, ...) and the Core ATen IR after run_decompositions() (convolution,
# _native_batch_norm_legit_no_training, addmm, ...). Checked against torchvision's ResNet, DenseNet,
# EfficientNet (v1/v2), MobileNet v2/v3, ShuffleNet, SqueezeNet, RegNet, VGG, GoogLeNet, MNASNet,
# ConvNeXt, ViT, Swin (v1/v2) and MaxViT, both IRs. Never here: file and storage operators
# (from_file, set_ with storages), random-number generation (rand*, normal, bernoulli, ...),
# distributed, profiler, I/O, the _unsafe_* indexing operators (no bounds checks: reads and writes
# outside a tensor's memory) and the empty* factories (uninitialised memory, which can hold an earlier
# job's images, would flow into the scores; no classifier export in the survey above uses them).
_ATEN_OPS = """
convolution _convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
linear addmm mm bmm matmul baddbmm addbmm addmv mv dot outer einsum t

batch_norm native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
_native_batch_norm_legit_functional _batch_norm_with_update _batch_norm_with_update_functional
_batch_norm_no_update instance_norm layer_norm native_layer_norm group_norm native_group_norm
rms_norm _fused_rms_norm linalg_vector_norm norm

relu relu_ relu6 hardtanh hardtanh_ hardswish hardswish_ hardsigmoid hardsigmoid_ sigmoid sigmoid_
silu silu_ gelu gelu_ tanh tanh_ elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ prelu
_prelu_kernel mish mish_ softplus threshold threshold_ glu log_sigmoid log_sigmoid_forward
softmax _softmax log_softmax _log_softmax _safe_softmax clamp clamp_ clamp_min clamp_min_ clamp_max
clamp_max_ clip clip_

abs neg sign sgn reciprocal sqrt rsqrt exp exp2 expm1 log log2 log10 log1p pow square erf sin cos
atan2 floor ceil round trunc frac add add_ sub sub_ rsub mul mul_ div div_ floor_divide remainder
fmod true_divide minimum maximum where masked_fill masked_fill_ lerp addcmul addcdiv eq ne lt le gt
ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not bitwise_xor
isnan isinf isfinite nan_to_num cumsum

mean sum prod amax amin max min argmax argmin var var_mean std std_mean any all logsumexp topk sort
argsort

max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices avg_pool1d
avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
upsample_nearest1d upsample_nearest2d upsample_bilinear2d upsample_bicubic2d upsample_linear1d
_upsample_bilinear2d_aa _upsample_nearest_exact2d grid_sampler grid_sampler_2d affine_grid_generator
pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle im2col col2im unfold

view view_as reshape reshape_as _unsafe_view permute transpose transpose_ swapaxes swapdims movedim
contiguous clone flatten unflatten squeeze squeeze_ unsqueeze unsqueeze_ expand expand_as
expand_copy view_copy permute_copy cat concat concatenate stack hstack vstack split split_with_sizes
tensor_split chunk unbind slice slice_scatter select select_scatter narrow index index_select gather
scatter scatter_add index_put index_put_ index_add take_along_dim roll flip repeat tile
repeat_interleave pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d
replication_pad2d _pad_circular as_strided alias detach detach_ lift_fresh lift_fresh_copy _to_copy
to type_as copy copy_ fill fill_ zero_ zeros zeros_like ones ones_like full full_like new_zeros
new_ones new_full arange linspace
scalar_tensor eye tril triu diagonal embedding one_hot

scaled_dot_product_attention _scaled_dot_product_flash_attention
_scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_efficient_attention
_scaled_dot_product_cudnn_attention _scaled_dot_product_attention_math _native_multi_head_attention

dropout dropout_ native_dropout feature_dropout feature_dropout_ alpha_dropout feature_alpha_dropout

sym_size sym_stride sym_numel sym_storage_offset _assert_tensor_metadata _assert_scalar _assert_async
_functional_assert_async _functional_assert_scalar sym_constrain_range sym_constrain_range_for_size
_functional_sym_constrain_range _functional_sym_constrain_range_for_size item _local_scalar_dense
"""
_PRIMS_OPS = "convert_element_type broadcast_in_dim view_of squeeze"

ALLOWED_OPS: frozenset[str] = frozenset(
    [f"aten.{n}" for n in _ATEN_OPS.split()] + [f"prims.{n}" for n in _PRIMS_OPS.split()]
)

# Integer arithmetic on symbolic sizes (``b * 2`` in ``x.reshape(b * 2, -1)``), as the serializer
# spells the Python functions (deserialized into the callables in ``allowed_callables``).
ALLOWED_SYM_TARGETS: frozenset[str] = frozenset(
    [f"_operator.{n}" for n in ("add", "sub", "mul", "floordiv", "mod", "neg", "pos", "truediv")]
    + [f"_operator.{n}" for n in ("eq", "ne", "lt", "le", "gt", "ge")]
    + [f"torch.sym_{n}" for n in ["int", "float", "max", "min", "not", "ite"]]
    + ["math.trunc"]
)

_ATEN_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\Z")


def _overload_ok(overload: str) -> bool:
    return overload != "out" and not overload.endswith("_out")


def op_allowed(namespace: str, name: str, overload: str) -> bool:
    return f"{namespace}.{name}" in ALLOWED_OPS and _overload_ok(overload)


def check_target(target: object, field: str, fname: str) -> None:
    """Refuse a serialized node target that is not an allowed operator."""
    if isinstance(target, str) and target in ALLOWED_SYM_TARGETS:
        return
    m = _ATEN_TARGET.match(target) if isinstance(target, str) else None
    if m and op_allowed(*m.groups()):
        return
    raise ModelRefused(
        f"{fname}: {field} calls {_show(target)}, which is not one of the PyTorch operators accepted for "
        f"classifiers (convolutions, linear layers, normalisation, activations, pooling, attention, shape "
        f"and elementwise operators; file, storage, random, distributed and unchecked-indexing operators "
        f"are never accepted). If the model needs it, ask the maintainers to review and add it"
    )


def allowed_callables() -> dict[Callable[..., Any], str]:
    """The Python functions ``ALLOWED_SYM_TARGETS`` deserialize to (plus ``operator.getitem``, which
    the deserializer itself inserts for multi-output operators)."""
    import math
    import operator

    import torch

    out: dict[Callable[..., Any], str] = {operator.getitem: "_operator.getitem"}
    for t in ALLOWED_SYM_TARGETS:
        module, attr = t.split(".", 1)
        obj = {"_operator": operator, "torch": torch, "math": math}[module]
        out[getattr(obj, attr)] = t
    return out


# -- the archive --------------------------------------------------------------------------------

_INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_OUTPUT_KINDS = frozenset({"user_output", "buffer_mutation", "user_input_mutation", "parameter_mutation"})
_REFUSED_ARGS = {
    "as_graph": "a subgraph (control flow or another higher-order operator)",
    "as_custom_obj": "a TorchScript custom object",
    "as_operator": "an operator passed as a value",
}
_PAYLOAD_PATH = re.compile(r"(?:weight|tensor)_[0-9]{1,9}\Z")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def load_json(data: bytes, member: str, fname: str) -> Any:
    """Parse an archive member as JSON, refusing duplicate keys (two parsers could then disagree)."""
    if len(data) > MAX_JSON_BYTES:
        raise ModelRefused(f"{fname}: archive member {member} is {len(data)} bytes, above {MAX_JSON_BYTES}")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ModelRefused(f"{fname}: archive member {member} repeats the JSON key {_show(k)}")
            out[k] = v
        return out

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except ModelRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelRefused(f"{fname}: archive member {member} is not valid JSON ({type(exc).__name__})") from None


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every dict in ``obj``."""
    stack = [(path, obj)]
    while stack:
        here, o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                p = f"{here}.{k}" if here else str(k)
                yield p, k, v
                stack.append((p, v))
        elif isinstance(o, list):
            stack.extend((f"{here}[{i}]", v) for i, v in enumerate(o))


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_float(v: object) -> bool:
    """A JSON number, or how torch's serializer spells the non-finite floats."""
    return type(v) in (int, float) or v in ("Infinity", "-Infinity", "NaN")


def check_generic(obj: Any, member: str, fname: str) -> None:
    """Checks that hold anywhere in any JSON member torch parses: every ``expr_str`` matches the
    symbolic-expression grammar, typed scalars have their type (torch does not check them, and a string
    where an integer belongs reaches sympy), and no subgraphs, custom objects or operator values."""
    for path, key, value in _walk(obj):
        field = f"{member}:{path}"
        if key == "expr_str":
            check_sym_expr(value, field, fname)
        elif key in _REFUSED_ARGS:
            raise ModelRefused(
                f"{fname}: {field} is {_REFUSED_ARGS[key]}; classifiers are accepted as plain operator graphs "
                f"only (no control flow, custom objects or higher-order operators). {_REEXPORT} without them"
            )
        elif key == "as_int" and not _is_int(value):
            raise _typed(fname, field, "an integer", value)
        elif key == "as_ints" and not (isinstance(value, list) and all(_is_int(v) for v in value)):
            raise _typed(fname, field, "a list of integers", value)
        elif key == "as_float" and not _is_float(value):
            raise _typed(fname, field, "a number", value)
        elif key == "as_floats" and not (isinstance(value, list) and all(_is_float(v) for v in value)):
            raise _typed(fname, field, "a list of numbers", value)
        elif key == "as_bool" and type(value) is not bool:
            raise _typed(fname, field, "true or false", value)
        elif key in ("min_val", "max_val") and value is not None and not _is_int(value):
            raise _typed(fname, field, "an integer or null", value)


def _typed(fname: str, field: str, expected: str, value: object) -> ModelRefused:
    return ModelRefused(
        f"{fname}: {field} must be {expected}, it is {_show(value)}; torch does not check these types (text "
        f"where a number belongs can reach sympy). The file was edited or made by another tool; {_REEXPORT}"
    )


def _check_treespec(text: object, field: str, fname: str) -> None:
    """A pytree spec as torch.export writes it for ``forward(x)``: protocol 1, tuples, lists, dicts
    with identifier keys, leaves; nothing that names another type or an enum."""

    def bad(why: str) -> ModelRefused:
        return ModelRefused(
            f"{fname}: {field} is not a plain pytree spec of tuples, lists and dicts ({why}); torch would "
            f"look up the types it names. {_REEXPORT}"
        )

    if not isinstance(text, str) or len(text) > 100_000:
        raise bad("not text, or too long")
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        raise bad("not JSON") from None
    if not (isinstance(spec, list) and len(spec) == 2 and spec[0] == 1):
        raise bad("not [1, <spec>]")
    count = 0
    stack = [(spec[1], 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > 16 or count > 10_000:
            raise bad("too deep or too large")
        if not (isinstance(node, dict) and set(node) == {"type", "context", "children_spec"}):
            raise bad("a node is not {type, context, children_spec}")
        typ, ctx, children = node["type"], node["context"], node["children_spec"]
        if not isinstance(children, list):
            raise bad("children_spec is not a list")
        if typ is None:
            if ctx is not None or children:
                raise bad("a leaf has a context or children")
        elif typ in ("builtins.tuple", "builtins.list"):
            if ctx != "null":
                raise bad(f"{typ} has a context")
        elif typ == "builtins.dict":
            try:
                keys = json.loads(ctx) if isinstance(ctx, str) else None
            except ValueError:
                keys = None
            if not (isinstance(keys, list) and all(is_identifier(k) for k in keys) and len(keys) == len(children)):
                raise bad("a dict's keys are not identifiers")
        else:
            raise bad(f"type {_show(typ)}")
        stack.extend((c, depth + 1) for c in children)


def check_payload_config(cfg: Any, member: str, fname: str) -> None:
    """A weights/constants config: raw tensors only (no pickles), stored under ``weight_N`` /
    ``tensor_N``, keyed by module paths."""
    check_generic(cfg, member, fname)
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise ModelRefused(f"{fname}: {member} has no 'config' table; is it a torch.export.save() archive?")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") or not _PAYLOAD_PATH.match(
            str(meta.get("path_name", ""))
        ):
            raise ModelRefused(
                f"{fname} stores {fqn!r} as a pickled object; only raw tensors are accepted (pickles can run code)"
            )
        _check_fqn(fqn, f"{member}: the tensor name", fname)
        if not isinstance(meta.get("tensor_meta"), dict):
            raise ModelRefused(f"{fname}: {member}: {fqn!r} has no tensor metadata")


_MODULE_PART = re.compile(r"^[A-Za-z0-9_.@]{0,300}$")


def module_calls(program: Any) -> dict[str, tuple[str, ...]]:
    """Which module calls each node's output belongs to, from the ``nn_module_stack`` metadata that
    ``check_program_json`` drops: output name -> the stack's call keys (outermost first), e.g.
    ``("L__self__", "L__self__features", "L__self__features.norm5")``.

    Only read as text: each entry is ``key,path,type`` joined by ``;``; keys must be dotted
    identifiers (with torch's ``@n`` call counters), the type is never looked at, and a node whose
    metadata does not parse simply has no entry. Used for TorchCAM's layer rule (``layer: torchcam``).
    """
    out: dict[str, tuple[str, ...]] = {}
    graph = program.get("graph_module", {}).get("graph", {}) if isinstance(program, dict) else {}
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for node in nodes if isinstance(nodes, list) else []:
        meta = node.get("metadata") if isinstance(node, dict) else None
        stack = meta.get("nn_module_stack") if isinstance(meta, dict) else None
        outputs = node.get("outputs") if isinstance(node, dict) else None
        if not isinstance(stack, str) or not isinstance(outputs, list) or len(outputs) != 1:
            continue
        tensor = outputs[0].get("as_tensor") if isinstance(outputs[0], dict) else None
        name = tensor.get("name") if isinstance(tensor, dict) else None
        keys = [entry.split(",", 2)[0] for entry in stack.split(";")] if len(stack) < 100_000 else []
        if isinstance(name, str) and keys and all(_MODULE_PART.match(k) for k in keys):
            out[name] = tuple(keys)
    return out


def check_program_json(program: Any, member: str, fname: str) -> dict[str, Any]:
    """Check the serialized ExportedProgram ``program`` (parsed JSON) and return it without node
    metadata, ready for ``_dict_to_dataclass``. Raises ModelRefused naming the first bad field."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ModelRefused(f"{fname}: {member} is not a serialized torch.export program")
    check_generic(program, member, fname)
    gm = program["graph_module"]
    graph = gm.get("graph")
    if not isinstance(graph, dict):
        raise ModelRefused(f"{fname}: {member} has no graph")
    where = f"{member}:graph_module.graph"

    for i, inp in enumerate(graph.get("inputs") or []):
        arg = inp.get("as_tensor") if isinstance(inp, dict) else None
        if not isinstance(arg, dict):
            raise ModelRefused(
                f"{fname}: {where}.inputs[{i}] is not a tensor; a classifier's program takes tensors only "
                f"(parameters, buffers, constants and the image batch). {_REEXPORT}"
            )
        _check_name(arg.get("name"), f"{where}.inputs[{i}] (a placeholder name)", fname)
    for table in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
        for name in graph.get(table) or {}:
            _check_name(name, f"{where}.{table} key", fname)
    if graph.get("custom_obj_values"):
        raise ModelRefused(f"{fname}: {where}.custom_obj_values holds TorchScript custom objects, never accepted")

    def value_names(obj: Any, path: str) -> None:
        for p, key, value in _walk(obj, path):
            if key in ("name", "as_name"):
                _check_name(value, p, fname)

    value_names(graph.get("inputs"), f"{where}.inputs")
    value_names(graph.get("outputs"), f"{where}.outputs")
    for i, node in enumerate(graph.get("nodes") or []):
        field = f"{where}.nodes[{i}]"
        if not isinstance(node, dict):
            raise ModelRefused(f"{fname}: {field} is not a node")
        check_target(node.get("target"), f"{field}.target", fname)
        if node.get("name") is not None:
            _check_name(node["name"], f"{field}.name", fname)
        for j, named in enumerate(node.get("inputs") or []):
            if not isinstance(named, dict):
                raise ModelRefused(f"{fname}: {field}.inputs[{j}] is not a named argument")
            # An operator's argument name (torch looks it up in the schema; '' for positional ones).
            arg_name = named.get("name")
            if arg_name not in ("", None) and not (isinstance(arg_name, str) and _IDENT.match(arg_name)):
                _check_name(arg_name, f"{field}.inputs[{j}].name", fname)
            value_names(named.get("arg"), f"{field}.inputs[{j}].arg")
        value_names(node.get("outputs"), f"{field}.outputs")
        node["metadata"] = {}

    sig = gm.get("signature") or {}
    for kind_list, allowed in (("input_specs", _INPUT_KINDS), ("output_specs", _OUTPUT_KINDS)):
        for i, spec in enumerate(sig.get(kind_list) or []):
            field = f"{member}:graph_module.signature.{kind_list}[{i}]"
            kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
            if kind not in allowed:
                raise ModelRefused(
                    f"{fname}: {field} is a {_show(kind)} spec; a classifier's program has parameters, buffers, "
                    f"tensor constants and tensor inputs/outputs only (no tokens, custom objects or constant "
                    f"inputs). {_REEXPORT}"
                )
            body = spec[kind]
            for key in ("parameter_name", "buffer_name", "tensor_constant_name", "target"):
                if isinstance(body, dict) and key in body and body[key] is not None:
                    _check_fqn(body[key], f"{field}.{key}", fname)
            for path, key, value in _walk(body, field):
                if key in ("name", "as_name"):
                    _check_name(value, path, fname)

    for i, entry in enumerate(gm.get("module_call_graph") or []):
        field = f"{member}:graph_module.module_call_graph[{i}]"
        if not isinstance(entry, dict):
            raise ModelRefused(f"{fname}: {field} is not a module call entry")
        _check_fqn(entry.get("fqn"), f"{field}.fqn", fname, allow_empty=True)
        sig_i = entry.get("signature")
        if sig_i is None:
            continue
        for name in sig_i.get("forward_arg_names") or []:
            _check_name(name, f"{field}.signature.forward_arg_names", fname)
        for key in ("in_spec", "out_spec"):
            _check_treespec(sig_i.get(key), f"{field}.signature.{key}", fname)
        for path, key, value in _walk({"inputs": sig_i.get("inputs"), "outputs": sig_i.get("outputs")}, field):
            if key in ("name", "as_name"):
                _check_name(value, path, fname)
    if gm.get("treespec_namedtuple_fields"):
        raise ModelRefused(
            f"{fname}: {member} declares namedtuple types; a classifier returns one tensor. {_REEXPORT}"
        )
    gm["metadata"] = {}

    for key, bounds in (program.get("range_constraints") or {}).items():
        if not (isinstance(key, str) and _SYMBOL.match(key)):
            raise ModelRefused(
                f"{fname}: {member}:range_constraints has the key {_show(key)}, which is not a size symbol such "
                f"as 's0'. {_REEXPORT}"
            )
        if not isinstance(bounds, dict):
            raise ModelRefused(f"{fname}: {member}:range_constraints[{key!r}] is not a {{min_val, max_val}} range")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise ModelRefused(f"{fname}: {member}:guards_code is not a list")
    for i, guard in enumerate(guards):
        check_guard(guard, f"{member}:guards_code[{i}]", fname)
    for i, v in enumerate(program.get("verifiers") or []):
        if not (v == "" or is_identifier(v)):
            raise ModelRefused(f"{fname}: {member}:verifiers[{i}] is {_show(v)}, not a verifier name")
    return program


def check_program(ep: Any, fname: str) -> None:
    """After deserialization (defence in depth): only placeholders, allowed operator calls and the
    output, identifier names, allowed guards and argument names."""
    import torch

    callables = allowed_callables()
    for node in ep.graph.nodes:
        if node.op not in ("placeholder", "call_function", "output"):
            raise ModelRefused(
                f"{fname}: the program has a {node.op!r} node ({node.name!r}); only operator calls are accepted"
            )
        _check_name(node.name, f"node {node.name!r}", fname)
        if node.op == "placeholder":
            _check_name(node.target, f"placeholder {node.name!r}", fname)
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            name = target._schema.name.split("::", 1)[-1]
            if not op_allowed(target.namespace, name, target._overloadname):
                check_target(str(target), f"node {node.name!r}", fname)  # raises with the usual message
                raise ModelRefused(f"{fname}: node {node.name!r} calls {target}, which is not accepted")
            for arg in target._schema.arguments:
                type_name = str(arg.type)
                if "Storage" in type_name or "Generator" in type_name or (
                    "str" in type_name and arg.name in ("filename", "file", "path")
                ):
                    raise ModelRefused(f"{fname}: node {node.name!r} calls {target}, which takes a {arg.name!r} "
                                       f"({type_name}) argument; file, storage and generator arguments are refused")
        elif target not in callables:
            raise ModelRefused(
                f"{fname} calls {target!r}, which is not a PyTorch aten/prims operator; only plain operator "
                "graphs are accepted"
            )
    for i, guard in enumerate(getattr(ep, "_guards_code", None) or []):
        check_guard(guard, f"guards_code[{i}]", fname)
    for entry in ep.module_call_graph[:1]:
        for name in (entry.signature.forward_arg_names or []) if entry.signature else []:
            _check_name(name, "forward_arg_names", fname)
    for spec in ep.graph_signature.input_specs:
        if spec.target is not None:
            _check_fqn(spec.target, f"input {spec.arg.name!r}", fname)
