"""PyTorch ``torch.export`` programs (``.pt2``), loaded without unpickling anything.

``torch.export.load`` falls back to ``torch.load(weights_only=False)`` for pickled weights,
constants and sample inputs, so it must not see an upload. We open the archive ourselves, refuse
any member that would be unpickled, check the JSON before torch parses it (``pt2_validate``: text
torch would evaluate, names it writes into generated source, operators outside an allowlist), rebuild
the weights from raw tensor bytes, deserialize the graph from the checked JSON, and check the result
again. The result keeps autograd, so every gradient method works on it.
"""

from __future__ import annotations

import copy
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx
from torch.export.pt2_archive import _package as pt2

from etm.errors import BadInput, ModelRefused
from etm.models import pt2_validate as pt2v
from etm.models.base import Forward, HeadInfo, Model, check_outputs
from etm.models.layouts import Kind, Layout, layout_of
from etm.models.target_search import GraphNode, Target, find_target
from etm.models.torchcam_layer import TorchCamLayer

_POOL_TARGETS = {"aten.mean.dim", "aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default"}
_SHAPE_OPS = {
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.flatten.using_ints",
    "aten.squeeze.dims",
    "aten.squeeze.dim",
    "aten.clone.default",
    "aten.dropout.default",
    "aten.alias.default",
    "aten.contiguous.default",
    "aten.dropout_.default",
}
_LINEAR_OPS = {"aten.linear.default", "aten.addmm.default", "aten.mm.default"}
# Inference-mode batch norm after the pool (BatchNorm1d heads): an affine map per feature, so still linear.
_AFFINE_OPS = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}


def load_exported_program(
    path: Path, calls: dict[str, tuple[str, ...]] | None = None
) -> torch.export.ExportedProgram:
    """Deserialize a ``.pt2`` archive without unpickling; raise ModelRefused when it would need to,
    or when its JSON holds anything torch would turn into code (see ``pt2_validate``). ``calls``, when
    given, is filled with each node's module calls (``pt2_validate.module_calls``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise ModelRefused(f"{path.name} is not a .pt2 archive (not a zip file)") from exc
    names = [i.filename for i in infos]
    if any(n.startswith("/") or ".." in n.split("/") for n in names):
        raise ModelRefused(f"{path.name} has archive members with absolute or '..' paths")
    if len(set(names)) != len(names):
        raise ModelRefused(f"{path.name} has two archive members with the same name; re-save it with torch.export.save")
    too_big = [i.filename for i in infos if i.filename.endswith(".json") and i.file_size > pt2v.MAX_JSON_BYTES]
    if too_big:
        raise ModelRefused(f"{path.name}: archive member {too_big[0]} inflates past {pt2v.MAX_JSON_BYTES} bytes")
    reader = pt2.PT2ArchiveReader(str(path))
    files = reader.get_file_names()
    models = [f for f in files if f.startswith(pt2.MODELS_DIR) and f.endswith(".json")]
    if len(models) != 1:
        raise ModelRefused(f"{path.name} must hold exactly one exported program, found {len(models)}")
    model_name = models[0][len(pt2.MODELS_DIR) : -len(".json")]
    _refuse_pickled_payloads(reader, model_name, files, path.name)
    program = None
    for member in files:  # every JSON member, before torch parses any of them
        if not member.endswith(".json"):
            continue
        obj = pt2v.load_json(reader.read_bytes(member), member, path.name)
        if member == models[0]:
            if calls is not None:
                calls.update(pt2v.module_calls(obj))
            program = pt2v.check_program_json(obj, member, path.name)
        else:
            pt2v.check_generic(obj, member, path.name)
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    # From the checked (metadata-free) dict itself, so nothing unchecked is parsed again.
    serialized = _dict_to_dataclass(schema.ExportedProgram, program)
    state_dict = pt2._load_state_dict(reader, model_name)
    constants = pt2._load_constants(reader, model_name)
    # Sample inputs are a torch.save pickle: we never read them (b"" deserializes to nothing).
    ep = ExportedProgramDeserializer(None).deserialize(serialized, state_dict, constants, b"")
    pt2v.check_program(ep, path.name)
    return ep


def _refuse_pickled_payloads(reader: pt2.PT2ArchiveReader, model_name: str, files: list[str], fname: str) -> None:
    legacy = [f"{pt2.WEIGHTS_DIR}{model_name}.pt", f"{pt2.CONSTANTS_DIR}{model_name}.pt"]
    if any(f in files for f in legacy):
        raise ModelRefused(
            f"{fname} stores weights in the legacy pickled format; re-export it with a current torch.export.save()"
        )
    for cfg_name in (
        pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model_name),
        pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model_name),
    ):
        if cfg_name not in files:
            raise ModelRefused(f"{fname} lacks {cfg_name}; is it a torch.export.save() archive?")
        cfg = pt2v.load_json(reader.read_bytes(cfg_name), cfg_name, fname)
        pt2v.check_payload_config(cfg, cfg_name, fname)


class _Tap(torch.nn.Module):
    """Inserted after the target node: keeps its activation (per thread), as ``[N, K, h, w]``, for the
    caller. With ``cut`` the rest of the graph reads a copy rebuilt from a detached grid that requires
    grad, so ``d logit / d A`` is differentiated through the layers after A only (the layers before it
    need no autograd) and, for tokens or a channels-last map, with respect to the grid itself."""

    def __init__(self, cut: bool, layout: Callable[[tuple[int, ...]], Layout]) -> None:
        super().__init__()
        self.cut = cut
        self.layout = layout
        self._local = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.layout(tuple(x.shape))
        grid = layout.to_grid(x)
        if self.cut:
            grid = grid.detach().requires_grad_(True)
        self._local.value = grid
        # The graph goes on with a copy: an in-place op after the tapped node (DenseNet's relu_ after
        # norm5, TorchCAM's layer) must neither change the kept activation nor touch a grad leaf.
        if self.cut:
            return layout.from_grid(grid, x.detach()).clone()
        return x.clone()

    def take(self) -> torch.Tensor | None:
        value = getattr(self._local, "value", None)
        self._local.value = None
        return value


def _tapped_program(
    gm: torch.fx.GraphModule, layer: str, cut: bool, layout: Callable[[tuple[int, ...]], Layout]
) -> tuple[torch.fx.GraphModule, _Tap]:
    """A compiled copy of the program with a ``_Tap`` after ``layer``: one generated forward instead
    of ``fx.Interpreter``'s node-by-node Python. The weights are shared with ``gm``, not copied, and
    the rewrite is our own code on an already-checked graph, so the safe-loading rules still hold."""
    graph = copy.deepcopy(gm.graph)
    tapped = torch.fx.GraphModule(gm, graph)
    tap = _Tap(cut, layout)
    tapped.add_submodule("_etm_tap", tap)
    node = next(n for n in graph.nodes if n.name == layer)
    with graph.inserting_after(node):
        t = graph.call_module("_etm_tap", (node,))
    node.replace_all_uses_with(t, delete_user_cb=lambda user: user is not t)
    tapped.recompile()
    return tapped, tap


@dataclass
class Pt2Model(Model):
    gm: torch.fx.GraphModule | None = None
    auto_layer: str | None = None
    # How the auto layer's activation lies (see layouts); "nchw" for a CNN's pooled feature map.
    auto_kind: Kind = "nchw"
    # Transformers: the class token the head reads, or None for a mean over tokens (attention rollout).
    readout_token: int | None = None
    attention_layers: list[str] = field(default_factory=list)  # nodes with full attention (pt2_attention)
    torchcam_layer: str | None = None  # TorchCAM's default target layer (see torchcam_candidate)
    head_chain: list[str] | None = None
    pool_desc: str = ""
    format: str = "pt2"
    # (layer, cut) -> the tapped program (see _tapped_program), made on first use.
    _taps: dict[tuple[str, bool], tuple[torch.fx.GraphModule, _Tap]] = field(default_factory=dict, repr=False)
    _attention: tuple[torch.fx.GraphModule, object] | None = field(default=None, repr=False)

    @property
    def supports_autograd(self) -> bool:
        return True

    def _layout(self, layer: str) -> Callable[[tuple[int, ...]], Layout]:
        hint: Kind | None = self.auto_kind if layer == self.auto_layer else None
        size = tuple(self.metadata.input_size)

        def layout(shape: tuple[int, ...]) -> Layout:
            return layout_of(layer, shape, size, hint)  # type: ignore[arg-type]

        return layout

    def _run(self, x: torch.Tensor, layer: str | None, cut: bool = False) -> Forward:
        assert self.gm is not None
        if layer is None:
            out = self.gm(x)
            return Forward(_first(out))
        if (layer, cut) not in self._taps:
            self._taps[(layer, cut)] = _tapped_program(self.gm, layer, cut, self._layout(layer))
        program, tap = self._taps[(layer, cut)]
        out = program(x)
        act = tap.take()
        if act is None or act.ndim != 4:
            raise BadInput(f"layer {layer!r} did not produce an activation")
        return Forward(_first(out), act)

    def forward(self, images: torch.Tensor, layer: str | None = None) -> Forward:
        with torch.no_grad():
            f = self._run(self.preprocess(images), layer)
        f.logits = f.logits.float()
        check_outputs(f.logits, len(images), self.num_outputs, f.activation)
        return f

    def autograd_forward(self, images: torch.Tensor, layer: str | None = None) -> Forward:
        """Without ``layer``: ``images`` may require grad; gradients flow through preprocessing to
        them. With ``layer``: the activation (as a grid, see ``layouts``) is a leaf that requires grad
        and the graph after it is differentiable (the head only); nothing before it is."""
        with torch.enable_grad():
            f = self._run(self.preprocess(images), layer, cut=layer is not None)
        check_outputs(f.logits, len(images), self.num_outputs, f.activation)
        return f

    def attention(
        self, images: torch.Tensor, targets_of: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor]:
        """Every block's attention probabilities ``[N, heads, T, T]``, in order, and the logits. With
        ``targets_of`` also ``d class_logit / d probabilities`` of each block (through the whole network)."""
        from etm.models.pt2_attention import attention_program

        assert self.gm is not None
        if self._attention is None:
            self._attention = attention_program(self.gm)
        program, keep = self._attention
        keep.probs = []  # type: ignore[attr-defined]
        x = self.preprocess(images)
        if targets_of is None:
            with torch.no_grad():
                logits = _first(program(x)).float()
            return list(keep.probs), None, logits  # type: ignore[attr-defined]
        with torch.enable_grad():
            logits = _first(program(x.detach().requires_grad_(True)))
            probs = list(keep.probs)  # type: ignore[attr-defined]
            sel = self.class_logit(logits, targets_of(logits.detach())).sum()
            grads = list(torch.autograd.grad(sel, probs))
        return [p.detach() for p in probs], [g.detach() for g in grads], logits.detach().float()

    def resolve_layer(self, layer: str) -> str:
        assert self.gm is not None
        if layer == "auto":
            if self.auto_layer is None:
                raise BadInput(
                    "no global average pooling, token mean or class-token read-out found before the output, so "
                    "the target layer cannot be chosen automatically; name an activation with layer=<graph node name>"
                )
            return self.auto_layer
        if layer == "torchcam":
            if self.torchcam_layer is None:
                raise BadInput(
                    "layer 'torchcam' needs the program's module structure (nn_module_stack), which this .pt2 "
                    "does not carry, or no module outputs a 4-D activation; name a node with layer=<graph node name>"
                )
            assert self.gm is not None
            node = next(n for n in self.gm.graph.nodes if n.name == self.torchcam_layer)
            inplace = any(str(u.target) == "aten.relu_.default" for u in node.users)
            return TorchCamLayer(self.torchcam_layer, relu_after=inplace)
        shapes = dict(graph_shapes(self.gm))
        if layer not in shapes:
            names = list(shapes)
            raise BadInput(
                f"layer {layer!r} is not a node of this program; use 'auto' or a node name such as {names[-6:]}"
            )
        shape = shapes[layer]
        if shape is not None and -1 not in shape[1:]:
            self._layout(layer)(shape)  # a clear refusal now, not in the middle of a job
        return layer

    def head(self, layer: str) -> HeadInfo | None:
        """pt2 programs differentiate the whole network, so no head weights are needed."""
        return None

    @property
    def head_is_linear(self) -> bool:
        chain = self.head_chain or []
        if self.auto_kind != "nchw":  # found by target_search: its kinds, from the target on
            return [k for k in chain if k != "shape"] == ["mean", "linear"]
        return (
            bool(chain)
            and all(op in _SHAPE_OPS | _LINEAR_OPS | _AFFINE_OPS or op == "aten.add.Tensor" for op in chain)
            and sum(op in _LINEAR_OPS for op in chain) == 1
        )


def _first(out: object) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        if len(out) != 1:
            raise BadInput(f"the model returns {len(out)} outputs; exactly one [N, C] tensor is required")
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out


def analyse_graph(gm: torch.fx.GraphModule) -> tuple[str | None, list[str], str]:
    """Find the auto target layer (input of the last global average pool) and the head op chain."""
    const: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr" or (
            n.op == "call_function" and all(a.name in const for a in n.all_input_nodes) and n.all_input_nodes
        ):
            const.add(n.name)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    cur = out_node.all_input_nodes[0] if out_node.all_input_nodes else None
    chain: list[str] = []
    while cur is not None and cur.op == "call_function":
        target = str(cur.target)
        data = [a for a in cur.all_input_nodes if a.name not in const]
        if target in _POOL_TARGETS and _is_global(cur):
            chain.reverse()
            return data[0].name, chain, f"{target} at node {cur.name!r}"
        # A second data input is a second path into the head (an MLP branch added to the linear one), which
        # makes it non-linear whatever the ops: marked so that head_is_linear says no.
        chain.append(target if len(data) <= 1 else f"{target} (of two branches)")
        cur = data[0] if data else None
    return None, [], ""


_KINDS = {
    **{t: "shape" for t in _SHAPE_OPS},
    **{t: "linear" for t in _LINEAR_OPS},
    "aten.layer_norm.default": "norm",
    "aten.native_layer_norm.default": "norm",
    "aten.permute.default": "permute",
    "aten.transpose.int": "permute",
    "aten.mean.dim": "mean",
    "aten.select.int": "select",
    "aten.slice.Tensor": "slice",
    "aten._softmax.default": "softmax",
    "aten.softmax.int": "softmax",
    "aten.scaled_dot_product_attention.default": "attention",
    "aten.unsqueeze.default": "shape",
    "aten.squeeze.default": "shape",
    "aten.expand.default": "shape",
    "aten.unbind.int": "shape",
    **{f"aten.{op}.default": "activation" for op in ("gelu", "relu", "silu", "tanh", "sigmoid", "hardswish")},
}


def graph_nodes(gm: torch.fx.GraphModule) -> tuple[dict[str, GraphNode], list[str], str]:
    """The program as ``target_search`` sees it: (nodes by name, topological order, output node name)."""
    const: set[str] = set()
    nodes: dict[str, GraphNode] = {}
    order: list[str] = []
    shapes = dict(graph_shapes(gm))
    for n in gm.graph.nodes:
        if n.op in ("get_attr",):
            const.add(n.name)
        if n.op != "call_function":
            continue
        data = [a.name for a in n.all_input_nodes if a.name not in const]
        if not data and n.all_input_nodes:
            const.add(n.name)
            continue
        target = str(n.target)
        kind = _KINDS.get(target, "other")
        if target in ("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor"):
            kind = "add" if len(data) > 1 else "affine"
        elif target == "<built-in function getitem>":
            kind = "shape"
        elif kind == "linear" and len(data) > 1:
            kind = "matmul"  # two data inputs (q @ k^T), not a projection with a constant weight
        node = GraphNode(n.name, kind, data, shapes.get(n.name))
        if kind == "mean":
            node.dims = tuple(int(d) for d in (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", ())))
        elif kind == "select":
            node.axis, node.index = int(n.args[1]), int(n.args[2])
        nodes[n.name] = node
        order.append(n.name)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    first = out_node.all_input_nodes[0].name if out_node.all_input_nodes else ""
    return nodes, order, first


def token_target(gm: torch.fx.GraphModule) -> Target | None:
    """``target_search.find_target`` on this program."""
    return find_target(*graph_nodes(gm))


def graph_shapes(gm: torch.fx.GraphModule) -> list[tuple[str, tuple[int, ...] | None]]:
    """(name, static output shape or None) of every call_function node, in order (batch dim kept as -1)."""
    out: list[tuple[str, tuple[int, ...] | None]] = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        val = n.meta.get("val")
        # Symbolic sizes stay -1: int() on a SymInt would add a guard that fixes the batch size.
        shape = tuple(d if isinstance(d, int) else -1 for d in val.shape) if isinstance(val, torch.Tensor) else None
        out.append((n.name, shape))
    return out


def _is_global(node: torch.fx.Node) -> bool:
    if str(node.target) == "aten.mean.dim":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dims is not None and sorted(int(d) % 4 for d in dims) == [2, 3]
    size = node.args[1] if len(node.args) > 1 else None
    return size is not None and list(size) == [1, 1]
