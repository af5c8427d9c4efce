"""A job's measures built from its spec: one rule for the parameters, at admission and at evaluation."""

from __future__ import annotations

from etm.errors import BadInput
from etm.measures import MEASURES
from etm.measures.base import Measure
from etm.spec import EvaluationSpec


def measure_for(spec: EvaluationSpec, name: str) -> Measure:
    """Measure family ``name`` with the job's parameters (``bootstrap_resamples`` and its ``measure_params``).

    Raises:
        BadInput: a parameter the measure does not take, or a value it refuses (the measure's message).
    """
    params = {"bootstrap_resamples": spec.bootstrap_resamples, **spec.measure_params.get(name, {})}
    try:
        return MEASURES[name](params)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"bad parameters for measure {name!r}: {exc}") from exc


def check_measure_params(spec: EvaluationSpec) -> None:
    """BadInput unless every measure of ``spec`` accepts its parameters and ``measure_params`` names only
    measures the job runs."""
    for name in spec.measure_params:
        if name not in spec.measures:
            raise BadInput(f"measure_params names {name!r}, which is not among the measures {spec.measures}")
    for name in spec.measures:
        measure_for(spec, name)
