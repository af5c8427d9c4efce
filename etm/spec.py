"""The evaluation spec: what a job asks for. Shared by the CLI, the API and the workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _measure_names() -> list[str]:
    from etm.measures import measure_names  # here: the measures import torch, the spec module does not

    return measure_names()


def _default_measure_names() -> list[str]:
    from etm.measures import default_measure_names

    return default_measure_names()


def _method_names() -> list[str]:
    from etm.salience.registry import method_names

    return method_names()


def __getattr__(name: str) -> tuple[str, ...]:
    """``MEASURE_FAMILIES`` and ``METHODS``: the registries' names now (``etm.measures.MEASURES``,
    ``etm.salience.registry``), read when asked, so that registered plugins count and no list is kept here."""
    if name == "MEASURE_FAMILIES":
        return tuple(_measure_names())
    if name == "METHODS":
        return tuple(_method_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _measures_enum(schema: dict[str, Any]) -> None:
    # Called when the JSON schema is generated (the OpenAPI document at app start), after plugins registered.
    from etm.measures import MEASURES

    schema.setdefault("items", {})["enum"] = [*MEASURES, "all"]
    schema["x-opt-in"] = [n for n, c in MEASURES.items() if c.opt_in]  # not in the default list nor in 'all'
    listed = ", ".join(f"`{n}` ({c.title}{', opt-in' if c.opt_in else ''})" for n, c in MEASURES.items())
    schema["description"] = (
        "Measure families to compute (default, or ['all']: every family but the opt-in ones, which cost several "
        f"standard jobs and run only when named): {listed}."
    )


def _method_enum(schema: dict[str, Any]) -> None:
    from etm.salience.registry import methods

    schema["enum"] = _method_names()
    # Names for generated clients' enum members: ``gradcam++`` would become ``GRADCAM``, like ``gradcam``.
    schema["x-enum-varnames"] = [n.replace("+", "_plus").replace("-", "_").upper() for n in schema["enum"]]
    titles = {n: m.title for n, m in methods().items()}
    schema["description"] = "Salience method: " + ", ".join(f"`{n}` ({titles[n]})" for n in schema["enum"]) + "."


# ``profile: paper`` replicates Crum et al. in one switch: what it sets where the job leaves a field
# at its default (fields and measure params the job gives explicitly win). See docs/MEASURES.md.
PAPER_MEASURES = ["entropy", "noise", "geometry", "stability", "degradation"]
PAPER_VARIANTS = ("entropy.histogram", "oos.noise", "geometry.ssim", "stability.ssim", "degradation.blur")
PAPER_MEASURE_PARAMS: dict[str, dict[str, Any]] = {
    "entropy": {"histogram_normaliser": 5.614},  # the authors' notebook: entropy / 5.614
    "degradation": {"variants": ["degradation.blur"], "reference_size": None},  # sigmas in plain pixels
}


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
    ood_dataset: str | None = Field(
        None,
        description="The out-of-set dataset (library/CLI: a folder; API: a dataset id): images of other sources, "
        "for oos.set and the accuracy.ood variants.",
    )
    ood_split: str | None = Field(None, description="Split of the out-of-set dataset (as `split`).")
    measures: list[str] = Field(
        default_factory=_default_measure_names,
        description="Measure families to compute.",  # the full text, with the families: _measures_enum
        json_schema_extra=_measures_enum,
    )
    measure_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per measure family, its parameters; an unknown name is refused with the accepted ones.",
    )
    method: str = Field("gradcam", description="Salience method.", json_schema_extra=_method_enum)  # see _method_enum
    method_params: dict[str, Any] = Field(default_factory=dict)
    layer: str = "auto"
    target: Literal["predicted"] | int | str = "predicted"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    batch_size: int = Field(64, ge=1, le=4096)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    max_images: int | None = Field(None, ge=1, description="Use N images evenly spaced over the canonical order.")
    overlays: int = Field(8, ge=0, le=64, description="Salience overlay PNGs per candidate in artifacts.")
    score: Literal["target", "pascore"] = Field(
        "target",
        description="Score the measures report: the target class's probability, or the paper's PAScore "
        "(sigmoid of the positive class's logit: sigmoid(logits)[:, 1] for the paper's models).",
    )
    profile: Literal["default", "paper"] = Field(
        "default",
        description="'paper' sets every choice of Crum et al.'s released code at once: paper variants only, "
        "PAScore, TorchCAM's default target layer, the literal blur sigmas, the 5.614 entropy normaliser. "
        "Fields given explicitly win.",
    )

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, v: list[str]) -> list[str]:
        known = _measure_names()
        if v == ["all"]:
            return _default_measure_names()
        unknown = [m for m in v if m not in known]
        if unknown:
            raise ValueError(f"unknown measure(s) {unknown}; choose from {known} or 'all' (all but the opt-in ones)")
        return sorted(set(v), key=known.index)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        known = _method_names()
        if v not in known:
            raise ValueError(f"unknown salience method {v!r}; choose from {known}")
        return v

    @field_validator("measure_params")
    @classmethod
    def _declared_measure_params(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each family's parameters as its class declares them (names; values where the class checks them), so a
        typo is refused when the job is submitted, naming the accepted keys, not when a worker runs it."""
        from etm.measures import MEASURES

        for name, params in v.items():
            if name not in MEASURES:
                raise ValueError(f"measure_params names {name!r}, which is not a measure; choose from {list(MEASURES)}")
            try:
                MEASURES[name](params)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bad parameters for measure {name!r}: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _apply_profile(self) -> EvaluationSpec:
        if self.profile != "paper":
            return self
        given = self.model_fields_set
        if "measures" not in given:
            self.measures = list(PAPER_MEASURES)
        if "layer" not in given or self.layer == "auto":
            self.layer = "torchcam"
        if "score" not in given:
            self.score = "pascore"
        params = {k: dict(v) for k, v in self.measure_params.items()}
        for fam, defaults in PAPER_MEASURE_PARAMS.items():
            params[fam] = {**defaults, **params.get(fam, {})}
        self.measure_params = params
        return self

    def reported_variants(self, variants: list[str]) -> list[str]:
        """The variants of a measure family this job reports (the paper profile: the paper's only)."""
        return [v for v in variants if self.profile != "paper" or v in PAPER_VARIANTS]

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluationSpec:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return self

    def canonical(self) -> dict[str, Any]:
        """JSON-ready form with defaults filled in: the config part of cache keys and reports."""
        return self.model_dump(mode="json")
