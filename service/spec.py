"""The evaluation spec: what a job asks for. Shared by the CLI, the API and the workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MEASURE_FAMILIES = (
    "entropy",
    "noise",
    "oos_set",
    "geometry",
    "stability",
    "degradation",
    "agreement",
    "accuracy",
)
METHODS = ("gradcam", "cam", "gradcam++", "scorecam", "integrated_gradients", "smoothgrad", "rise")


class CandidateSpec(BaseModel):
    """A candidate: a family of 1..K training runs of the same recipe."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    models: list[str] = Field(
        ..., min_length=1, max_length=50, description="Model file paths (library/CLI) or model ids (API)."
    )


class EvaluationSpec(BaseModel):
    """Everything that determines a report. Two equal specs on equal files give equal numbers."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[CandidateSpec] = Field(..., min_length=1, max_length=20)
    dataset: str = Field(..., description="Dataset folder (library/CLI) or dataset id (API).")
    split: str | None = Field(
        None, description="Split to use when the dataset has splits; default test, else all images."
    )
    ood_dataset: str | None = None
    ood_split: str | None = None
    measures: list[str] = Field(default_factory=lambda: list(MEASURE_FAMILIES))
    measure_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    method: Literal["gradcam", "cam", "gradcam++", "scorecam", "integrated_gradients", "smoothgrad", "rise"] = "gradcam"
    method_params: dict[str, Any] = Field(default_factory=dict)
    layer: str = "auto"
    target: Literal["predicted"] | int | str = "predicted"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    batch_size: int = Field(64, ge=1, le=4096)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    max_images: int | None = Field(None, ge=1, description="Use N images evenly spaced over the canonical order.")
    overlays: int = Field(8, ge=0, le=64, description="Salience overlay PNGs per candidate in artifacts.")

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, v: list[str]) -> list[str]:
        if v == ["all"]:
            return list(MEASURE_FAMILIES)
        unknown = [m for m in v if m not in MEASURE_FAMILIES]
        if unknown:
            raise ValueError(f"unknown measure(s) {unknown}; choose from {list(MEASURE_FAMILIES)} or 'all'")
        return sorted(set(v), key=MEASURE_FAMILIES.index)

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluationSpec:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return self

    def canonical(self) -> dict[str, Any]:
        """JSON-ready form with defaults filled in: the config part of cache keys and reports."""
        return self.model_dump(mode="json")
