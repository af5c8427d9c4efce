"""The replication (issue: reference benchmark): the human-guided `cyborg` family differs from the
cross-entropy `xent` family in the directions Crum et al. report, with non-overlapping 95% CIs.

Runs the real evaluation on the committed model families (5 runs each, ONNX) over an evenly spaced
subset of the generated test split, and the held-out generators as the out-of-set set; the deletion
gap, a smaller effect, on the whole test split. Blurring the salient region costs each family more
than blurring its background (the paper's statement of the blur measure); that cyborg's difference is
the larger does not show with separate CIs and is analysed in docs/REPLICATION.md rather than asserted.
"""

from __future__ import annotations

import pytest

from benchdata import paths
from benchdata.replicate import SEEN, SEEN_WHOLE_SPLIT, degradation_whole_split, ensure_data, spec_for, verdicts
from etm.evaluation import evaluate


def _ready() -> None:
    if not all(p.is_file() for r in paths.RECIPES for p in paths.family_files(r)):
        pytest.fail("benchdata/models is incomplete: run `make benchmark-models`")
    ensure_data()


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    _ready()
    report = evaluate(spec_for(120, resamples=1000)).report
    return {r["measure"]: r for r in verdicts(report)}


@pytest.fixture(scope="module")
def whole_split_rows() -> dict[str, dict]:
    _ready()
    report = degradation_whole_split(variants=["degradation.deletion"]).report
    assert report["dataset"]["n_images"] == 1000
    return {r["measure"]: r for r in verdicts(report)}


@pytest.mark.parametrize("measure", SEEN)
def test_cyborg_differs_from_xent_as_the_paper_reports(rows: dict[str, dict], measure: str) -> None:
    _assert_separated(rows[measure], measure)


@pytest.mark.parametrize("measure", SEEN_WHOLE_SPLIT)
def test_on_the_whole_test_split_cyborg_differs_from_xent(whole_split_rows: dict[str, dict], measure: str) -> None:
    _assert_separated(whole_split_rows[measure], measure)


@pytest.mark.parametrize("family", paths.RECIPES)
def test_blurring_the_salient_region_costs_more_than_the_background(rows: dict[str, dict], family: str) -> None:
    blur = rows["degradation.blur"][family]
    assert blur["ci"][0] > 0, (
        f"{family}: score(background blurred) - score(salient region blurred) = {blur['value']:.3f} {blur['ci']}, "
        "expected a 95% CI above 0"
    )


def _assert_separated(r: dict, measure: str) -> None:
    assert r["separated"] is True, (
        f"{measure}: expected cyborg {r['expected']} than xent with non-overlapping CIs; "
        f"xent {r['xent']['value']:.3f} {r['xent']['ci']}, cyborg {r['cyborg']['value']:.3f} {r['cyborg']['ci']}"
    )
