"""The five measures of Crum et al. (and the extras), one module per measure family.

``MEASURES`` maps the family names a job selects (``EvaluationSpec.measures``) to their classes.
"""

from __future__ import annotations

from service.measures.accuracy import AccuracyMeasure
from service.measures.agreement import AgreementMeasure
from service.measures.base import Measure
from service.measures.degradation import DegradationMeasure
from service.measures.entropy import EntropyMeasure
from service.measures.geometry import GeometryMeasure
from service.measures.noise import NoiseMeasure
from service.measures.oos_set import OodSetMeasure
from service.measures.stability import StabilityMeasure

MEASURES: dict[str, type[Measure]] = {
    "entropy": EntropyMeasure,
    "noise": NoiseMeasure,
    "oos_set": OodSetMeasure,
    "geometry": GeometryMeasure,
    "stability": StabilityMeasure,
    "degradation": DegradationMeasure,
    "agreement": AgreementMeasure,
    "accuracy": AccuracyMeasure,
}

# Bump when a change alters any reported number: it is part of the result-cache key.
# 1.1.0: the paper variants follow the authors' 8-bit arithmetic; 1.2.0: Score-CAM weighs at most 256 channels
# per image by default (max_channels).
MEASURES_VERSION = "1.2.0"


def needs_salience(measures: list[str]) -> bool:
    """Whether a job of these measure families computes salience maps (and so needs its method to run)."""
    return any(MEASURES[m].needs_salience for m in measures)
