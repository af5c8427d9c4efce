"""The model interface every loader returns, whatever the file format, and the runtime faults
a forward pass can end in (non-finite or misshapen outputs, out of memory)."""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from etm.errors import ModelRuntimeError
from etm.models.metadata import ModelMetadata

# How allocation failures read in the runtimes we use: PyTorch (CUDA and CPU), ONNX Runtime's arena and
# its CUDA provider. Matched on the message because ONNX Runtime raises one generic exception type.
_OOM_MARKERS = (
    "out of memory",
    "failed to allocate memory",
    "available memory of",  # BFCArena: "Available memory of X is smaller than requested bytes of Y"
    "can't allocate memory",
    "bad_alloc",
    "bad allocation",
    "cudaerrormemoryallocation",
)


class OutputNotFinite(ModelRuntimeError):
    """A forward pass produced NaN or Inf; ``rows`` are the offending rows of the input batch."""

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


class ModelOutOfMemory(ModelRuntimeError):
    """A batch did not fit in memory even after halving it down to ``smallest`` images."""

    title = "Out of memory"

    def __init__(self, message: str, smallest: int) -> None:
        super().__init__(message)
        self.smallest = smallest


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of PyTorch or ONNX Runtime (worth retrying smaller)."""
    if isinstance(exc, ModelRuntimeError):
        return False
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    text = str(exc).lower()
    return any(m in text for m in _OOM_MARKERS)


def release_memory() -> None:
    """Give back what a failed batch held before a smaller retry: Python garbage, PyTorch's CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_outputs(logits: torch.Tensor, n: int, c: int, activation: torch.Tensor | None = None) -> None:
    """A forward pass must give finite logits [n, c] (and a finite activation when one was asked for).

    Raises:
        ModelRuntimeError: wrong shape.
        OutputNotFinite: NaN or Inf, with the rows of the batch where they appear.
    """
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] != c:
        raise ModelRuntimeError(
            f"the model output has shape {list(logits.shape)} on a batch of {n} images, but [{n}, {c}] was "
            f"expected ({c} class scores per image, as the graph and metadata say); check that the output does "
            "not depend on a fixed batch size and that class_names match the output"
        )
    for what, value in (("output", logits), ("target layer activation", activation)):
        if value is None:
            continue
        finite = torch.isfinite(value.detach()).reshape(len(value), -1).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().tolist()
            raise OutputNotFinite(
                f"the model {what} contains NaN or Inf for {len(rows)} of {len(value)} images", rows
            )


@dataclass(frozen=True)
class Capability:
    """Whether a salience method can run on a model, and why (or why not)."""

    method: str
    available: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "available": self.available, "reason": self.reason}


@dataclass(frozen=True)
class HeadInfo:
    """A global-average-pool + linear head found after the target layer.

    ``weight`` is [C, K] and ``bias`` [C] such that ``logits = weight @ mean_hw(A) + bias``.
    """

    layer: str
    weight: torch.Tensor
    bias: torch.Tensor
    where: str  # human-readable location (node names), for the capability table


@dataclass
class Forward:
    """Outputs of one forward pass: logits [N, C] and, when asked for, the target layer's
    activation [N, K, h, w]."""

    logits: torch.Tensor
    activation: torch.Tensor | None = None


def n_classes(num_outputs: int) -> int:
    """How many classes a model with ``num_outputs`` outputs tells apart (one logit: two classes)."""
    return 2 if num_outputs == 1 else num_outputs


@dataclass
class Model(ABC):
    """A loaded classifier. Images come in as float RGB in [0, 1], shape [N, 3, H, W]."""

    sha256: str
    metadata: ModelMetadata
    num_outputs: int
    device: torch.device
    format: str = ""
    capabilities: dict[str, Capability] = field(default_factory=dict)
    # Likely metadata mistakes (etm.models.checks); None until the probe batch has run.
    warnings: list[dict[str, Any]] | None = None

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Reorder channels and normalise with the metadata's mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if self.metadata.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.metadata.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.metadata.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    # -- forward passes ------------------------------------------------------------------------
    @abstractmethod
    def forward(self, images: torch.Tensor, layer: str | None = None) -> Forward:
        """Forward-only pass (no autograd); with ``layer``, also return that activation."""

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).logits

    @property
    @abstractmethod
    def supports_autograd(self) -> bool: ...

    def autograd_forward(self, images: torch.Tensor, layer: str | None = None) -> Forward:
        """Forward pass with autograd enabled on the preprocessed input (``.pt2`` only)."""
        raise NotImplementedError(f"{self.format} models do not support autograd")

    @abstractmethod
    def resolve_layer(self, layer: str) -> str:
        """Map ``auto`` or a user-given name to a concrete 4-D activation name, or raise BadInput."""

    @abstractmethod
    def head(self, layer: str) -> HeadInfo | None:
        """The GAP + linear head after ``layer``, when the graph has one."""

    # -- reading outputs -----------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [N, n_classes] under the metadata's score activation."""
        act = self.metadata.score_activation
        if act == "softmax":
            return torch.softmax(logits.float(), dim=1)
        if act == "sigmoid":  # one output: P(class 1)
            p1 = torch.sigmoid(logits.float()[:, :1])
            return torch.cat([1 - p1, p1], dim=1)
        if act == "none":  # the outputs are probabilities already; one output is P(class 1)
            return torch.cat([1 - logits.float(), logits.float()], dim=1) if self.num_outputs == 1 else logits.float()
        return torch.sigmoid(logits.float())  # sigmoid_per_logit: the paper's PAScore

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        if self.num_outputs == 1:  # a logit decides at 0, a probability (score_activation none) at 0.5
            return (logits[:, 0] > (0.5 if self.metadata.score_activation == "none" else 0)).long()
        return logits.argmax(dim=1)

    def class_logit(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The pre-activation quantity gradient methods differentiate, per image."""
        if self.num_outputs == 1:
            return torch.where(targets == 1, logits[:, 0], -logits[:, 0])
        return logits.gather(1, targets.view(-1, 1)).squeeze(1)

    def class_weights(self, head: HeadInfo, targets: torch.Tensor) -> torch.Tensor:
        """Rows of the head's weight for each target class: [N, K] (sign-flipped for 1-output class 0)."""
        w = head.weight.to(self.device)
        if self.num_outputs == 1:
            return torch.where((targets == 1).view(-1, 1), w[0:1], -w[0:1])
        return w[targets]

    @property
    def n_classes(self) -> int:
        return n_classes(self.num_outputs)

    def load_warnings(self) -> list[dict[str, Any]]:
        """Likely metadata mistakes (``etm.models.checks.load_warnings``), from the loader's probe batch or,
        when the loader did not keep it, from one probe batch run now."""
        if self.warnings is None:
            from etm.models.checks import load_warnings, probe_images

            outputs: torch.Tensor | None
            try:
                outputs = self.forward(probe_images(2, *self.metadata.input_size)).logits
            except ModelRuntimeError:  # NaN/Inf on blank images is for real images to judge
                outputs = None
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                outputs = None  # this process's memory cap: the job's workers halve batches; no output check here
            self.warnings = load_warnings(self.metadata, self.num_outputs, outputs)
        return self.warnings

    def describe(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "format": self.format,
            "metadata": self.metadata.model_dump(mode="json"),
            "num_outputs": self.num_outputs,
            "device": str(self.device),
            "capabilities": {k: v.as_dict() for k, v in self.capabilities.items()},
            "warnings": self.load_warnings(),
        }
