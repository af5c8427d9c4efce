"""The five measures of Crum et al. (and the extras), one module per measure family.

``MEASURES`` is the registry: family name (what ``EvaluationSpec.measures`` selects) -> class, in the order
jobs and reports list them. It is the only list of measures: the spec's validation, the OpenAPI enum, the
report's notes and the page's titles all read it. A new measure is one module (a ``Measure`` subclass that
describes itself, see ``etm.measures.base``) and one ``register_measure`` line; a plugin module named in
``ETM_PLUGINS`` registers its own the same way (docs/MEASURES.md, "Adding a measure or a method").
"""

from __future__ import annotations

from etm.measures.accuracy import AccuracyMeasure
from etm.measures.agreement import AgreementMeasure
from etm.measures.base import Measure
from etm.measures.degradation import DegradationMeasure
from etm.measures.entropy import EntropyMeasure
from etm.measures.faithfulness import FaithfulnessMeasure
from etm.measures.geometry import GeometryMeasure
from etm.measures.localisation import LocalisationMeasure
from etm.measures.noise import NoiseMeasure
from etm.measures.oos_set import OosSetMeasure
from etm.measures.robustness import RobustnessMeasure
from etm.measures.sanity import SanityMeasure
from etm.measures.sparseness import SparsenessMeasure
from etm.measures.stability import StabilityMeasure
from etm.measures.strategies import StrategiesMeasure

MEASURES: dict[str, type[Measure]] = {}


def register_measure(cls: type[Measure]) -> type[Measure]:
    """Add a measure family to the registry under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: the class has no name, or another class has the name or one of its variants.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    taken = {v: n for n, c in MEASURES.items() if c is not cls for v in c.variants}
    clash = sorted(v for v in cls.variants if v in taken)
    if (cls.name in MEASURES and MEASURES[cls.name] is not cls) or clash:
        raise ValueError(f"measure {cls.name!r} clashes with a registered one (name or variants {clash})")
    MEASURES[cls.name] = cls
    return cls


for _cls in (
    EntropyMeasure,
    NoiseMeasure,
    OosSetMeasure,
    GeometryMeasure,
    StabilityMeasure,
    DegradationMeasure,
    AgreementMeasure,
    AccuracyMeasure,
):
    register_measure(_cls)
register_measure(StrategiesMeasure)  # opt-in (#20): SpRAy clustering of the maps

# Opt-in families (#20): not in the default list nor in ['all'], so existing jobs and reports are unchanged.
register_measure(SanityMeasure)
register_measure(SparsenessMeasure)
register_measure(LocalisationMeasure)
register_measure(RobustnessMeasure)
register_measure(FaithfulnessMeasure)

# Bump when a change alters any reported number: it is part of the result-cache key.
# 1.1.0: the paper variants follow the authors' 8-bit arithmetic; 1.2.0: Score-CAM weighs at most 256 channels
# per image by default (max_channels).
# 1.3.0: the opt-in families of #20 (sanity, strategies, sparseness, localisation, robustness, faithfulness); the
# numbers of the 1.2.0 families are unchanged (tests.report_hashes, less the version strings).
MEASURES_VERSION = "1.3.0"


def measure_names() -> list[str]:
    """The registered measure families, in registry order."""
    return list(MEASURES)


def default_measure_names() -> list[str]:
    """The families a job computes when it names none, or names ``all``: every family but the opt-in ones."""
    return [n for n, c in MEASURES.items() if not c.opt_in]


def needs_salience(measures: list[str]) -> bool:
    """Whether a job of these measure families computes salience maps (and so needs its method to run)."""
    return any(MEASURES[m].needs_salience for m in measures)


def variant_notes() -> dict[str, str]:
    """Variant name -> the one-line note the report page shows under it, from every registered measure."""
    return {v: note for cls in MEASURES.values() for v, note in cls.notes.items()}


def curve_titles() -> dict[str, str]:
    """Curve key (in a variant's ``details["curves"]``) -> the curve's title on the report page."""
    return {k: title for cls in MEASURES.values() for k, title in cls.curve_titles.items()}


# Last: a plugin registers its measures (and methods) with the functions above.
from etm.plugins import load_plugins  # noqa: E402

load_plugins()
