"""Load a model file safely: sniff the format, refuse what could run code, read metadata.

Refused with a message: pickles and ``torch.save`` checkpoints, TorchScript archives, ONNX files
that fail ``onnx.checker`` or the static checks of ``onnx_validate`` (external data in any graph,
loops, non-standard operator domains, constant-size allocation bombs, opsets the installed ONNX
Runtime does not provide), ``.pt2`` programs that fail the checks of ``pt2_validate`` (text torch
would evaluate, operators outside the allowlist), graphs whose input is not one 4-D image tensor or
whose output is not one ``[N, C]`` tensor.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from etm.errors import ModelRefused, ModelRuntimeError
from etm.models.base import Model, OutputNotFinite, is_out_of_memory
from etm.models.capabilities import capability_table
from etm.models.metadata import ModelMetadata
from etm.models.torchcam_layer import torchcam_candidate

if TYPE_CHECKING:
    import onnx

    from etm.models.onnx_model import OnnxModel


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sniff_format(path: Path) -> str:
    """'onnx' or 'pt2' from the bytes; ModelRefused for pickles, checkpoints, TorchScript, unknown."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ModelRefused(f"{path.name} is empty")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelRefused(
            f"{path.name} is a Python pickle; pickles can run arbitrary code and are never "
            "loaded. Export the model with torch.onnx.export (.onnx) or torch.export.save (.pt2)"
        )
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelRefused(f"{path.name} is a damaged zip archive") from exc
        if any(n.endswith("/models/model.json") or n.startswith("models/") for n in names) and any(
            "archive_format" in n for n in names
        ):
            return "pt2"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise ModelRefused(
                f"{path.name} is a TorchScript archive; TorchScript has no safe loading mode. "
                "Export with torch.export.save (.pt2) or torch.onnx.export (.onnx) instead"
            )
        if any(n.endswith("data.pkl") for n in names):
            raise ModelRefused(
                f"{path.name} is a torch.save checkpoint (pickled); it is never loaded. Export "
                "with torch.export.save (.pt2) or torch.onnx.export (.onnx) instead"
            )
        raise ModelRefused(f"{path.name} is a zip archive but not a torch.export .pt2 program")
    return "onnx"


def read_sidecar(path: Path) -> ModelMetadata | None:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file():
            return ModelMetadata.from_json_text(cand.read_text(), cand.name)
    return None


def load_model(
    path: str | Path, metadata: ModelMetadata | None = None, device: str | None = None, threads: int = 0
) -> Model:
    """Load ``path`` (.onnx or .pt2). Metadata: explicit > sidecar JSON > ONNX metadata_props > defaults.

    Raises:
        ModelRefused: unsafe or malformed files, with the reason.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    fmt = sniff_format(path)
    try:
        meta = metadata or read_sidecar(path)
    except ValueError as exc:
        raise ModelRefused(f"bad metadata for {path.name}: {exc}") from exc
    sha = file_sha256(path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _load_onnx(path, meta, sha, threads) if fmt == "onnx" else _load_pt2(path, meta, sha, dev)
    model.capabilities = capability_table(model)
    return model


def _load_onnx(path: Path, meta: ModelMetadata | None, sha: str, threads: int) -> OnnxModel:
    # Imported here: onnx pulls in ml_dtypes (1-4 s of every sandboxed start), which .pt2 runs never need.
    import onnx

    from etm.models.onnx_head import find_head, inferred_values, module_calls, relu_into
    from etm.models.onnx_model import OnnxModel
    from etm.models.onnx_subgraph import attention_outputs, token_target
    from etm.models.onnx_validate import validate_onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelRefused(f"{path.name} is neither an ONNX model nor a .pt2 program ({type(exc).__name__})") from exc
    if not proto.graph.node:
        raise ModelRefused(f"{path.name} is not an ONNX model (no graph nodes)")
    # Before the checker, which stats external-data paths and runs shape inference on every subgraph:
    # external data anywhere, loops, constant-size allocation bombs, non-standard domains, and (with a
    # more useful message than the checker's) opsets newer than the installed runtime.
    validate_onnx(proto, path.name, path.stat().st_size)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ModelRefused(f"{path.name} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from exc
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelRefused(
            f"the model must take one image tensor, it takes {len(inputs)} inputs ({[i.name for i in inputs]})"
        )
    dims = _dims(inputs[0])
    if len(dims) != 4:
        raise ModelRefused(
            f"the model input {inputs[0].name!r} has rank {len(dims)}; an image tensor [N, 3, H, W] "
            "(or [N, H, W, 3] with input_layout NHWC) is required"
        )
    meta = _declared_metadata(meta, proto, path.name)
    # Keras models through tf2onnx take channels-last images: detected from the input, or declared.
    layout = meta.input_layout if meta and meta.input_layout else ("NHWC" if dims[3] == 3 != dims[1] else "NCHW")
    channels, hw = (dims[1], dims[2:4]) if layout == "NCHW" else (dims[3], dims[1:3])
    if isinstance(channels, int) and channels != 3:
        raise ModelRefused(
            f"the model input has {channels} channels in its {layout} layout; 3 (RGB or BGR) are required"
            + ("" if layout == "NHWC" else " (for a channels-last input [N, H, W, 3], set input_layout: NHWC)")
        )
    output = _pick_output(proto, meta)
    odims = _dims(output)
    if len(odims) != 2:
        raise ModelRefused(
            f"the model output {output.name!r} has rank {len(odims)}; one [N, C] tensor of class scores is required"
        )
    if not isinstance(odims[1], int):
        raise ModelRefused("the number of classes (output dimension 1) must be fixed in the graph")
    # The detected layout stays on the model, not in the metadata: the metadata is what was declared, and the
    # registry compares a re-upload's metadata with it.
    meta = _metadata(meta, hw, path.name)
    try:
        meta = meta.resolved(odims[1])
    except ValueError as exc:
        raise ModelRefused(str(exc)) from exc
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    model = OnnxModel(
        sha256=sha,
        metadata=meta,
        num_outputs=odims[1],
        device=torch.device("cpu"),
        proto=proto,
        input_name=inputs[0].name,
        output_name=output.name,
        fixed_batch=fixed,
        threads=threads,
        nhwc_input=layout == "NHWC",
    )
    model.onnx_head = find_head(proto, model.output_name)
    shapes, model.value_types = inferred_values(proto)
    if model.onnx_head is None:
        model.token_target = token_target(proto, model.output_name, shapes)
    model.attention_outputs = attention_outputs(proto, shapes)
    model.torchcam_layer = torchcam_candidate(*module_calls(proto, shapes))
    model.pre_relu_layer = relu_into(proto, model.onnx_head.layer) if model.onnx_head else None
    _probe(model, fixed or 2, path.name)
    return model


def _probe(model: OnnxModel, n: int, name: str) -> None:
    """Run blank images once, so that an output whose real shape contradicts the graph is refused at upload,
    not in the middle of a job. NaN/Inf on blank images is not judged here: real images decide that. The
    outputs also tell whether the metadata is likely wrong (``model.warnings``: etm.models.checks)."""
    from etm.models.checks import load_warnings, probe_images

    h, w = model.metadata.input_size
    try:
        out = model.forward(probe_images(n, h, w)).logits  # black to white: two rows tell probabilities apart
        model.warnings = load_warnings(model.metadata, model.num_outputs, out)
    except OutputNotFinite:
        model.warnings = load_warnings(model.metadata, model.num_outputs, None)
    except ModelRuntimeError as exc:
        raise ModelRefused(f"{name} fails on a probe batch of {n} blank {h}x{w} images: {exc}") from exc
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # Not this process's call: a worker with more memory may run it, and batches are halved there.


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _declared_metadata(meta: ModelMetadata | None, proto: onnx.ModelProto, name: str) -> ModelMetadata | None:
    """The metadata given (argument or sidecar), else the graph's ``metadata_props`` key ``etm``, else None."""
    if meta is None:
        props = {p.key: p.value for p in proto.metadata_props}
        if "etm" in props:
            try:
                meta = ModelMetadata.from_json_text(props["etm"], f"{name} metadata_props")
            except ValueError as exc:
                raise ModelRefused(str(exc)) from exc
    return meta


def _pick_output(proto: onnx.ModelProto, meta: ModelMetadata | None) -> onnx.ValueInfoProto:
    """The graph output holding the class scores: the only one, or the one ``output`` names."""
    outputs = list(proto.graph.output)
    names = [o.name for o in outputs]
    wanted = meta.output if meta else None
    if wanted is not None:
        if wanted not in names:
            raise ModelRefused(f"metadata output {wanted!r} is not an output of the graph; its outputs are {names}")
        return outputs[names.index(wanted)]
    if len(outputs) != 1:
        raise ModelRefused(
            f"the model has {len(outputs)} outputs {names}; name the one with the class scores [N, C] in the "
            "metadata (output: <name>)"
        )
    return outputs[0]


def _metadata(meta: ModelMetadata | None, hw: list, name: str) -> ModelMetadata:
    meta = meta or ModelMetadata()
    if "input_size" not in meta.model_fields_set and isinstance(hw[0], int) and isinstance(hw[1], int):
        meta = meta.model_copy(update={"input_size": (hw[0], hw[1])})  # not given: the graph's own size
    if isinstance(hw[0], int) and isinstance(hw[1], int) and tuple(meta.input_size) != (hw[0], hw[1]):
        raise ModelRefused(
            f"metadata input_size {list(meta.input_size)} disagrees with the graph's fixed input "
            f"size {[hw[0], hw[1]]}"
        )
    return meta


def _load_pt2(path: Path, meta: ModelMetadata | None, sha: str, device: torch.device) -> Model:
    # Imported here: torch.export's deserializer pulls in torch._dynamo (seconds), which ONNX runs never need.
    from etm.models.pt2_attention import attention_nodes
    from etm.models.pt2_model import (
        Pt2Model,
        analyse_graph,
        graph_shapes,
        load_exported_program,
        token_target,
    )

    calls: dict[str, tuple[str, ...]] = {}
    try:
        ep = load_exported_program(path, calls)
    except ModelRefused:
        raise
    except Exception as exc:
        raise ModelRefused(
            f"{path.name} could not be read as a torch.export program: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"
        ) from exc
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user_inputs) != 1:
        raise ModelRefused(f"the program must take one image tensor, it takes {len(user_inputs)} inputs")
    gm = ep.module().to(device)
    for p in gm.parameters():
        p.requires_grad_(False)
    meta = meta or ModelMetadata()
    if meta.input_layout == "NHWC" or meta.output is not None:
        raise ModelRefused(
            "input_layout NHWC and output are for ONNX graphs; a .pt2 program must take [N, 3, H, W] images and "
            "return one [N, C] tensor (wrap the model so that it does, then export it)"
        )
    probe = torch.zeros(2, 3, *meta.input_size, device=device)
    try:
        with torch.no_grad():
            out = gm(probe)
    except Exception as exc:
        raise ModelRefused(
            f"the program does not run on a [2, 3, {meta.input_size[0]}, {meta.input_size[1]}] "
            f"input (check input_size in the metadata; batch size must be dynamic): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from exc
    if not isinstance(out, torch.Tensor) and not (isinstance(out, (tuple, list)) and len(out) == 1):
        raise ModelRefused("the program must return one [N, C] tensor")
    out = out if isinstance(out, torch.Tensor) else out[0]
    if out.ndim != 2:
        raise ModelRefused(f"the program's output has shape {tuple(out.shape)}; one [N, C] tensor is required")
    try:
        meta = meta.resolved(int(out.shape[1]))
    except ValueError as exc:
        raise ModelRefused(str(exc)) from exc
    layer, chain, pool = analyse_graph(gm)
    kind, readout = "nchw", None
    if layer is None and (found := token_target(gm)) is not None:
        layer, chain, pool, kind, readout = found.layer, found.head, found.how, found.kind, found.readout
    return Pt2Model(
        sha256=sha,
        metadata=meta,
        num_outputs=int(out.shape[1]),
        device=device,
        gm=gm,
        auto_layer=layer,
        auto_kind=kind,
        readout_token=readout,
        attention_layers=attention_nodes(gm),
        torchcam_layer=torchcam_candidate(graph_shapes(gm), calls),
        head_chain=chain,
        pool_desc=pool,
    )
