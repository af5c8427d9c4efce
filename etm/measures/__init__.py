"""The five measures of Crum et al. (and the extras), one module per measure family.

``MEASURES`` maps the family names a job selects (``EvaluationSpec.measures``) to their classes.
"""

from __future__ import annotations

from etm.measures.accuracy import AccuracyMeasure
from etm.measures.agreement import AgreementMeasure
from etm.measures.base import Measure
from etm.measures.degradation import DegradationMeasure
from etm.measures.entropy import EntropyMeasure
from etm.measures.geometry import GeometryMeasure
from etm.measures.noise import NoiseMeasure
from etm.measures.oos_set import OodSetMeasure
from etm.measures.stability import StabilityMeasure

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


def variant_notes() -> dict[str, str]:
    """Measure name -> what its number is, in a few words (shown under each measure on the report page)."""
    return {
        "entropy.spatial": "spatial entropy of the native map",
        "entropy.histogram": "entropy of the 8-bit value histogram (paper)",
        "oos.noise": "area under the SSIM curve (paper)",
        "oos.set": "out-of-set minus in-set entropy",
        "geometry.ssim": "SSIM after undoing the transform",
        "geometry.pearson": "Pearson r after undoing the transform",
        "stability.ssim": "mean pairwise SSIM of 8-bit maps (paper)",
        "stability.pearson": "mean pairwise Pearson r",
        "degradation.deletion": "AUC(LeRF) - AUC(MoRF) of deletion curves",
        "degradation.blur": "drop(object blurred) - drop(background blurred) (paper)",
        "agreement.human": "Pearson r of map and mask",
        "agreement.human.ssim": "SSIM of map and mask",
        "agreement.human.mass": "share of salience inside the mask",
    }


def curve_titles() -> dict[str, str]:
    """Curve kind (a key of a measure's ``details.curves``) -> the title of its chart."""
    return {
        "score": "target-class score",
        "entropy": "salience entropy",
        "ssim": "SSIM to the clean map",
        "morf": "MoRF: most salient deleted first",
        "lerf": "LeRF: least salient deleted first",
        "random": "random order",
    }
