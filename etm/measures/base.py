"""The contract between the evaluation plan and each measure.

The plan streams a dataset in batches. For every batch it computes the clean salience of every run
of a candidate family once (``BatchContext.clean``) and hands the context to each requested
measure's ``per_image``. A measure returns *per-image columns* (numpy arrays whose first axis is the
batch's images); the plan concatenates them over batches and shards in the canonical image order,
then calls ``summarize`` once. Everything dataset-level (means, CIs, curves) is derived from those
columns in ``summarize``, which is why a sharded run merges to the same report as an unsharded one.

Column shapes: ``[N]`` for family-level values, ``[N, K]`` for per-run values (K runs), and
``[N, K, L]`` for per-run curves over L levels. Use NaN for "no value for this image" (an empty map)
and count those in the summary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from etm.params import Param, shown
from etm.salience.base import SalienceResult

Direction = Literal["higher", "lower"] | None
Columns = dict[str, np.ndarray]


@dataclass
class BatchContext:
    """One batch of images and everything measures may ask of the models.

    Attributes:
        keys: stable image ids (dataset-relative paths) in canonical order.
        images: [N, 3, H, W] float32 RGB in [0, 1] at the family's input size, on ``device``.
        labels: [N] long, the true class as a *model* class index, or -1 when unknown.
        masks: [N, H, W] float32 in [0, 1] human-salience annotations, or None for the batch.
        has_mask: [N] bool, which images carry an annotation (rows of ``masks`` are 0 otherwise).
        image_seeds: [N] int64, per-image seeds derived from the job seed and the key (stable
            whatever the batch or shard an image falls in).
        clean: per run, the clean salience of ``images``.
        salience_fn: ``salience_fn(run, images)`` computes salience of other images with the job's
            method, target rule and layer (targets re-decided on those images).
        logits_fn: ``logits_fn(run, images)`` forward-only pass, returns logits [N, C].
        probabilities_fn: ``probabilities_fn(run, logits)`` per-class probabilities [N, C].
        inset: on out-of-set batches, what the measure's ``finish_inset`` made of the in-set pass.
        pascore_class: the score measures report (``EvaluationSpec.score``): None = the probability
            of the target class; a class index = the paper's PAScore, ``sigmoid(logits)[:, c]``.
        layers_fn: ``layers_fn(run)`` the run's randomisable layers, input to output
            (``etm.models.randomization``; BadInput when it has none). For the sanity checks.
        explain_fn: ``explain_fn(run, images, targets, layers, seed)`` salience of ``images`` with the job's
            method and layer, explaining the given per-image ``targets`` [N] (not re-decided), on a copy of the
            run's model whose ``layers`` were re-initialised with ``seed`` (``()``: the model as loaded). For the
            sanity checks; None where the plan offers no randomisation.
    """

    keys: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    has_mask: torch.Tensor
    image_seeds: torch.Tensor
    clean: list[SalienceResult]
    salience_fn: Callable[[int, torch.Tensor], SalienceResult]
    logits_fn: Callable[[int, torch.Tensor], torch.Tensor]
    probabilities_fn: Callable[[int, torch.Tensor], torch.Tensor]
    seed: int = 0
    inset: dict[str, Any] = field(default_factory=dict)
    pascore_class: int | None = None
    layers_fn: Callable[[int], list[str]] | None = None
    explain_fn: Callable[[int, torch.Tensor, torch.Tensor, tuple[str, ...], int], SalienceResult] | None = None

    @property
    def n_runs(self) -> int:
        return len(self.clean)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def score_of(self, run: int, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The reported score of each row of ``logits`` for one run: [N] (see ``pascore_class``)."""
        if self.pascore_class is not None:
            return torch.sigmoid(logits.float()[:, self.pascore_class])
        probs = self.probabilities_fn(run, logits)
        return probs.gather(1, targets.view(-1, 1).to(probs.device)).squeeze(1)

    def scores(self, run: int, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The score (``score_of``) on ``images`` for one run, forward only: [N]."""
        return self.score_of(run, self.logits_fn(run, images), targets)

    def clean_scores(self, run: int) -> torch.Tensor:
        """The score of the clean images for one run (from the clean pass): [N]."""
        c = self.clean[run]
        return c.scores if self.pascore_class is None else self.score_of(run, c.logits, c.targets)



def score_description(pascore_class: int | None) -> str:
    """What the reported scores are (``BatchContext.pascore_class``), for the report's details."""
    if pascore_class is None:
        return "probability of the clean image's target class"
    return f"PAScore: sigmoid of the logit of class {pascore_class} (the paper's score)"


@dataclass
class MeasureResult:
    """One reported number with its uncertainty, as it appears in the report."""

    name: str  # e.g. "entropy.spatial"
    value: float | None
    ci: tuple[float, float] | None
    n: int
    direction: Direction
    variant: Literal["default", "paper", "extra"]
    parameters: dict[str, Any]
    n_empty: int = 0
    per_run: list[dict[str, Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Per-image values behind ``value`` (family mean over runs, canonical image order; NaN = no value).
    # Used for paired comparisons between candidates; not serialised.
    per_image: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "ci": list(self.ci) if self.ci is not None else None,
            "n": self.n,
            "n_empty": self.n_empty,
            "direction": self.direction,
            "variant": self.variant,
            "parameters": self.parameters,
            "per_run": self.per_run,
            "details": self.details,
        }


class Measure(ABC):
    """A family of measure variants computed from the same passes (e.g. entropy.spatial and
    entropy.histogram). The class describes itself: the registry (``etm.measures.MEASURES``), the spec's
    validation, the OpenAPI enums and the report page read these attributes, never a list of their own.

    Class attributes:
        name: the family, e.g. ``"entropy"`` (what ``EvaluationSpec.measures`` names).
        title, about: the family's heading on the report page and how to read it.
        variants: variant name -> (kind, direction), e.g. ``{"entropy.spatial": ("default", "lower")}``.
        notes: variant name -> a one-line note on what the variant computes (the report page's).
        param_types: parameter name -> its declared type and range (``etm.params.Param``), checked when the
            measure is made (so at submission): every parameter in ``default_params`` may be declared.
        curve_titles: curve key in ``details["curves"]`` -> the curve's title on the page.
        needs_oos: True when the measure also runs on the out-of-set dataset (``per_image_oos``).
        needs_salience: False when ``per_image`` reads only ``clean[r].logits``/``.predicted`` (no maps).
        opt_in: True when the family runs only if a job names it (not in the default list, not in ``all``).

    State from the in-set pass to the out-of-set pass (e.g. ``oos.set``'s in-set mean map) goes through
    two hooks, so that the plan knows no measure's internals: ``inset_state`` per in-set batch (integer
    arrays that the plan adds up over batches and shards), then ``finish_inset`` once on the sums, whose
    result the out-of-set batches see as ``ctx.inset``.
    """

    name: str = ""
    title: str = ""
    about: str = ""
    variants: dict[str, tuple[str, Direction]] = {}
    notes: dict[str, str] = {}
    param_types: dict[str, Param] = {}
    curve_titles: dict[str, str] = {}
    needs_oos: bool = False
    # False for measures that read only the clean forward pass (accuracy): a job of only those computes no
    # salience, so it needs no method the model can run.
    needs_salience: bool = True
    # True for families that cost several standard jobs (model randomisation, sensitivity sampling, clustering):
    # they run only when a job names them; the default list and ``["all"]`` are the standard families.
    opt_in: bool = False
    # Set by the plan from the job (``EvaluationSpec.score``), for the report: see BatchContext.
    pascore_class: int | None = None

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        declared = {"bootstrap_resamples", *self.default_params()}
        unknown = sorted(set(params or {}) - declared)
        if unknown:  # a typo would otherwise be ignored, and still enter the cache key
            raise ValueError(f"unknown parameter(s) {unknown} for {self.name}; accepted: {sorted(declared)}")
        bad = [
            f"{k} must be {p.allowed()}, got {shown(params[k])}"
            for k, p in self.param_types.items()
            if params and k in params and not p.accepts(params[k])
        ]
        if bad:
            raise ValueError(f"bad parameter(s) for {self.name}: " + "; ".join(bad))
        self.params = {**self.default_params(), **(params or {})}

    def default_params(self) -> dict[str, Any]:
        return {}

    def check_images(self, n_images: int) -> None:
        """Raise ``BadInput`` when a job of ``n_images`` images cannot give this measure a value at all (checked
        at admission, so the service refuses the job with 422 before it runs). The default accepts any count."""
        return None

    def passes_per_image(self, n_runs: int) -> dict[str, int]:
        """Model passes this measure adds per image beyond the shared clean pass:
        ``{"salience": a, "forward": b}`` (for the report and the benchmarks)."""
        return {"salience": 0, "forward": 0}

    @abstractmethod
    def per_image(self, ctx: BatchContext) -> Columns:
        """Per-image columns for one in-set batch."""

    def per_image_oos(self, ctx: BatchContext) -> Columns:
        """Per-image columns for one out-of-set batch (only when ``needs_oos``); ``ctx.inset`` holds
        what ``finish_inset`` made of the in-set pass."""
        return {}

    def inset_state(self, ctx: BatchContext) -> dict[str, np.ndarray] | None:
        """What this in-set batch adds to the state the out-of-set pass needs, or None (the default: no
        state). Integer arrays only: the plan adds them up over batches and shards, so the sum does not
        depend on the order or the sharding."""
        return None

    def finish_inset(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
        """``ctx.inset`` of the out-of-set batches, from the summed ``inset_state`` of the whole in-set."""
        return {}

    @abstractmethod
    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        """Dataset-level results from the concatenated columns."""

    def result(
        self,
        variant: str,
        summary: dict[str, Any],
        parameters: dict[str, Any],
        details: dict[str, Any],
        per_image: np.ndarray | None = None,
        n_empty: int | None = None,
        per_run: list[dict[str, Any]] | None = None,
    ) -> MeasureResult:
        """A variant's result from a ``stats.summarize``/``summarize_runs`` summary: value, CI, n,
        empty count and per-run summaries come from it unless given."""
        kind, direction = self.variants[variant]
        return MeasureResult(
            name=variant,
            value=summary["value"],
            ci=summary["ci"],
            n=summary["n"],
            direction=direction,
            variant=kind,  # type: ignore[arg-type]
            parameters=parameters,
            n_empty=summary["n_empty"] if n_empty is None else n_empty,
            per_run=summary.get("per_run") if per_run is None else per_run,
            details=details,
            per_image=per_image,
        )

    def unavailable(
        self, variant: str, parameters: dict[str, Any], details: dict[str, Any], n_empty: int = 0
    ) -> MeasureResult:
        """A variant that has no value on this input (``details["message"]`` says why)."""
        kind, direction = self.variants[variant]
        return MeasureResult(
            name=variant,
            value=None,
            ci=None,
            n=0,
            direction=direction,
            variant=kind,  # type: ignore[arg-type]
            parameters=parameters,
            n_empty=n_empty,
            details=details,
        )
