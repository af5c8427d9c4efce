"""ONNX models, run by ONNX Runtime (CUDA provider when present, CPU otherwise).

Why ONNX Runtime and not a conversion to PyTorch: ONNX Runtime is the reference implementation of
the format, so every exporter's output runs as exported (the dynamo exporter's opset 18+ graphs
with ``ReduceMean`` v18 and ``Reshape(allowzero=1)``, the legacy exporter's ``Identity`` nodes on
initializers), whereas converters such as ``onnx2torch`` fail on dynamo exports. Gradients are
needed only for the classification head (see ``onnx_head``); methods that need gradients through the
whole network are reported as unavailable on ONNX, never substituted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from etm.errors import BadInput, ModelRuntimeError
from etm.models.base import Forward, HeadInfo, Model, check_outputs, is_out_of_memory
from etm.models.layouts import Kind, Layout, layout_of
from etm.models.onnx_head import OnnxHead
from etm.models.onnx_subgraph import SubgraphHead, head_subgraph
from etm.models.target_search import Target
from etm.models.torchcam_layer import TorchCamLayer

_ARENA_LOCK = threading.Lock()
_arena_registered: int | None = None


def _shared_cpu_arena() -> bool:
    """Register one CPU memory arena capped at ``ETM_ORT_ARENA_MAX_BYTES`` for this process (once).

    Sessions that opt in (``session.use_env_allocators``) allocate from it, so a worker's ONNX Runtime
    memory is bounded and a batch that does not fit fails with an allocation error, which the evaluation
    answers by halving the batch. 0 (the default) keeps ONNX Runtime's own unbounded per-session arenas.
    """
    global _arena_registered
    from etm.settings import get_settings

    cap = get_settings().ort_arena_max_bytes
    if cap <= 0:
        return False
    with _ARENA_LOCK:
        if _arena_registered is None:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # -1: ONNX Runtime's defaults for the extend strategy, initial chunk and dead bytes per chunk.
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(cap, -1, -1, -1))
            _arena_registered = cap
    return True


def _providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@dataclass
class OnnxModel(Model):
    """A checked ONNX graph plus lazily built ONNX Runtime sessions (one per set of extra outputs)."""

    proto: onnx.ModelProto | None = None
    input_name: str = ""
    output_name: str = ""
    fixed_batch: int | None = None
    threads: int = 0
    nhwc_input: bool = False  # the graph takes [N, H, W, 3] (declared input_layout, or detected at load)
    onnx_head: OnnxHead | None = None
    torchcam_layer: str | None = None  # TorchCAM's default target layer (pt2_model.torchcam_candidate)
    # The input of a ReLU whose output feeds the global pool (DenseNet's ``features`` before its
    # functional ReLU), or None; set at load.
    pre_relu_layer: str | None = None
    # Found by target_search when the graph has no global average pool (transformers), or None.
    token_target: Target | None = None
    # Element type of every tensor (from shape inference), for extra session outputs; FLOAT if unknown.
    value_types: dict[str, int] = field(default_factory=dict)
    # Softmax outputs [N, heads, T, T]: each block's attention probabilities, for attention rollout.
    attention_outputs: list[str] = field(default_factory=list)
    _subgraphs: dict[str, SubgraphHead] = field(default_factory=dict)
    _sessions: dict[tuple[str, ...], ort.InferenceSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _head_info: HeadInfo | None = None

    format: str = "onnx"

    @property
    def supports_autograd(self) -> bool:
        return False

    def _session(self, extra: tuple[str, ...]) -> ort.InferenceSession:
        with self._lock:
            if extra not in self._sessions:
                assert self.proto is not None
                proto = onnx.ModelProto()
                proto.CopyFrom(self.proto)
                for name in extra:
                    kind = self.value_types.get(name, onnx.TensorProto.FLOAT)
                    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, kind, None))
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                # ONNX Runtime's spinning worker threads would fight PyTorch's OpenMP threads, which run
                # the measures between forward passes; without spinning both stay fast.
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                if _shared_cpu_arena():
                    opts.add_session_config_entry("session.use_env_allocators", "1")
                self._sessions[extra] = ort.InferenceSession(
                    proto.SerializeToString(), sess_options=opts, providers=_providers()
                )
            return self._sessions[extra]

    def _outputs(self, x: np.ndarray, extra: tuple[str, ...]) -> list[np.ndarray]:
        """The logits (float32) and the ``extra`` tensors (their own dtype) for the preprocessed ``x``."""
        sess = self._session(extra)
        outputs = [self.output_name, *extra]
        chunk = self.fixed_batch or max(len(x), 1)
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        sizes: list[int] = []
        for i in range(0, len(x), chunk):
            sizes.append(len(x[i : i + chunk]))
            try:
                res = sess.run(outputs, {self.input_name: x[i : i + chunk]})
            except Exception as exc:  # ONNX Runtime raises one generic type (Fail, RuntimeException...)
                if not type(exc).__module__.startswith("onnxruntime") or is_out_of_memory(exc):
                    # Not the runtime's (a Celery time limit raised in this frame): as it is. Out of memory:
                    raise  # the evaluation halves the batch and retries
                raise ModelRuntimeError(
                    f"ONNX Runtime failed to run the model on a batch of {len(x[i : i + chunk])} images: "
                    f"{_first_line(exc)}"
                ) from exc
            for j, r in enumerate(res):
                parts[j].append(np.asarray(r, dtype=np.float32) if j == 0 else np.asarray(r))
        # A tensor without a batch axis (a shape, say) is the same for every chunk: keep one.
        return [
            np.concatenate(p) if all(a.ndim and len(a) == n for a, n in zip(p, sizes, strict=True)) else p[0]
            for p in parts
        ]

    def layout(self, layer: str, shape: tuple[int, ...]) -> Layout:
        """How ``layer``'s activation of ``shape`` maps onto the image (see ``layouts``)."""
        target = self.token_target
        hint: Kind | None = target.kind if target is not None and target.layer == layer else None
        return layout_of(layer, shape, tuple(self.metadata.input_size), hint)  # type: ignore[arg-type]

    def _feed(self, images: torch.Tensor) -> np.ndarray:
        """The preprocessed images as the graph takes them (channels-last for an NHWC input)."""
        x = self.preprocess(images)
        if self.nhwc_input:
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.cpu().numpy())

    def forward(self, images: torch.Tensor, layer: str | None = None) -> Forward:
        x = self._feed(images)
        res = self._outputs(x, (layer,) if layer else ())
        out = torch.from_numpy(res[0])
        act = None
        if layer:
            raw = torch.from_numpy(res[1].astype(np.float32, copy=False))
            act = self.layout(layer, tuple(raw.shape)).to_grid(raw)
        check_outputs(out, len(x), self.num_outputs, act)
        return Forward(out, act)

    def attention(self, images: torch.Tensor) -> tuple[list[torch.Tensor], None, torch.Tensor]:
        """Every block's attention probabilities ``[N, heads, T, T]`` and the logits, in one pass (no
        gradients: ONNX Runtime has none, so gradient-weighted rollout needs the ``.pt2`` export)."""
        x = self._feed(images)
        res = self._outputs(x, tuple(self.attention_outputs))
        logits = torch.from_numpy(res[0])
        check_outputs(logits, len(x), self.num_outputs)
        probs = [r for r in res[1:] if r.ndim == 4 and r.shape[-1] == r.shape[-2]]
        return [torch.from_numpy(r.astype(np.float32, copy=False)) for r in probs], None, logits

    def subgraph(self, layer: str) -> SubgraphHead:
        """The head of ``layer`` for head-only autograd (``onnx_subgraph``), built once per layer."""
        if layer not in self._subgraphs:
            assert self.proto is not None
            self._subgraphs[layer] = head_subgraph(self.proto, layer, self.output_name)
        return self._subgraphs[layer]

    def head_gradient(
        self, images: torch.Tensor, layer: str, targets_of: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, d class_logit / d A, logits), A as ``[N, K, h, w]``: one ONNX Runtime pass for A, the logits
        and the head's other inputs, then autograd through the head alone."""
        head = self.subgraph(layer)
        if head.unsupported:
            raise BadInput(
                f"Grad-CAM at {layer!r} needs autograd through the rest of this ONNX graph, which contains "
                f"{head.unsupported}; upload the .pt2 export of the model or pick a later layer"
            )
        x = self._feed(images)
        side = [n for n in head.side if n != self.input_name]
        res = self._outputs(x, (layer, *side))
        logits = torch.from_numpy(res[0])
        raw = torch.from_numpy(res[1].astype(np.float32, copy=False))
        values = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in zip(side, res[2:], strict=True)}
        if self.input_name in head.side:
            values[self.input_name] = torch.from_numpy(x)
        layout = self.layout(layer, tuple(raw.shape))
        grid = layout.to_grid(raw).detach().requires_grad_(True)
        targets = targets_of(logits)
        with torch.enable_grad():
            out = head.logits(layout.from_grid(grid, raw), values)
            (grad,) = torch.autograd.grad(self.class_logit(out, targets).sum(), grid)
        check_outputs(logits, len(x), self.num_outputs, grid.detach())
        return grid.detach(), grad, logits

    def resolve_layer(self, layer: str) -> str:
        if layer == "auto":
            if self.onnx_head is not None:
                return self.onnx_head.layer
            if self.token_target is not None:
                return self.token_target.layer
            raise BadInput(
                "no global average pooling, token mean or class-token read-out found before the output, so the "
                "target layer cannot be chosen automatically; name an activation with layer=<tensor name>"
            )
        assert self.proto is not None
        if layer == "torchcam":
            return self._torchcam_layer()
        names = {o for n in self.proto.graph.node for o in n.output}
        if layer not in names:
            raise BadInput(
                f"layer {layer!r} is not a tensor of this ONNX graph; use 'auto' or one of the "
                f"node outputs, e.g. {sorted(names)[-5:]}"
            )
        return layer

    def _torchcam_layer(self) -> str:
        if self.torchcam_layer is None:
            raise BadInput(
                "layer 'torchcam' needs the module names of the PyTorch model this graph was exported from "
                "(the exporters' name scopes), which this graph does not carry; name a tensor with layer=<tensor name>"
            )
        if self.onnx_head is None or self.torchcam_layer not in (self.onnx_head.layer, self.pre_relu_layer):
            raise BadInput(
                f"layer 'torchcam' picks {self.torchcam_layer!r}, which does not feed the global average pool "
                "(directly or through one ReLU), so Grad-CAM on this ONNX graph cannot differentiate it without "
                "autograd; upload the .pt2 export of the model for TorchCAM's layer"
            )
        # ONNX keeps no in-place flag; a ReLU right after TorchCAM's layer is taken as torchvision's
        # in-place one (DenseNet), see TorchCamLayer.
        return TorchCamLayer(self.torchcam_layer, relu_after=self.torchcam_layer == self.pre_relu_layer)

    def head(self, layer: str) -> HeadInfo | None:
        h = self.onnx_head
        if h is None or h.layer != layer or not h.linear:
            return None
        if self._head_info is None:  # read once: evaluating the head at eye(K) costs ms at K = 2048
            w, b = h.linear_weights()
            self._head_info = HeadInfo(layer=layer, weight=w, bias=b, where=f"{h.pool} then {h.chain}")
        return self._head_info


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
