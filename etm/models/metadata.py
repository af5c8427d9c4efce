"""Model metadata: how to feed a model and how to read its outputs.

Read from a JSON sidecar (``model.onnx.json`` / ``model.pt2.json`` or ``<stem>.json``) or, for ONNX,
from ``metadata_props`` (key ``etm``: the same JSON). Every field has a default so that a bare
export works; the effective metadata is echoed in every report.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# none: the outputs are probabilities already (the graph ends in a softmax or sigmoid); they are used as they are.
ScoreActivation = Literal["softmax", "sigmoid", "sigmoid_per_logit", "none"]


class ModelMetadata(BaseModel):
    """Effective metadata of a model.

    Images reach the model as float RGB in [0, 1]; the wrapper reorders channels and applies
    ``(x - mean) / std`` before the forward pass.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = Field((224, 224), description="Input height and width in pixels.")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_names: list[str] | None = Field(None, description="One name per output; defaults to class_0..class_{C-1}.")
    positive_class: str | None = Field(
        None, description="Class whose probability is the score s(x) for AUROC; defaults to the last class."
    )
    score_activation: ScoreActivation = "softmax"
    input_layout: Literal["NCHW", "NHWC"] | None = Field(
        None,
        description="ONNX only: channels-first [N, 3, H, W] or channels-last [N, H, W, 3] (Keras through "
        "tf2onnx); detected from the graph's input when not given.",
    )
    output: str | None = Field(
        None, description="ONNX only: the graph output with the class scores, for a model with several outputs."
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std value must be > 0")
        return v

    @field_validator("input_size")
    @classmethod
    def _size_positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError("input_size must be at least 8x8 pixels")
        return v

    @model_validator(mode="after")
    def _positive_in_classes(self) -> ModelMetadata:
        if (
            self.class_names is not None
            and self.positive_class is not None
            and self.positive_class not in self.class_names
        ):
            raise ValueError(f"positive_class {self.positive_class!r} is not one of class_names {self.class_names}")
        return self

    def resolved(self, num_outputs: int) -> ModelMetadata:
        """Fill class names and the positive class for a model with ``num_outputs`` outputs."""
        n_classes = 2 if num_outputs == 1 else num_outputs
        names = self.class_names or [f"class_{i}" for i in range(n_classes)]
        if len(names) != n_classes:
            raise ValueError(
                f"metadata lists {len(names)} class_names but the model has {num_outputs} output(s) "
                f"({n_classes} classes)"
            )
        if num_outputs == 1 and self.score_activation not in ("sigmoid", "none"):
            raise ValueError(
                "a model with one output needs score_activation 'sigmoid' (a logit) or 'none' (a probability)"
            )
        return self.model_copy(update={"class_names": names, "positive_class": self.positive_class or names[-1]})

    @property
    def positive_index(self) -> int:
        assert self.class_names is not None and self.positive_class is not None
        return self.class_names.index(self.positive_class)

    @classmethod
    def from_json_text(cls, text: str, source: str) -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"metadata in {source} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"metadata in {source} must be a JSON object")
        return cls.model_validate(data)
