"""Gate requirements: parsing, absolute and relative (paired) checks, messages that say by how much."""

from __future__ import annotations

from typing import Any

import pytest

from client.gate import RequirementError, evaluate, format_table, parse_requirement, parse_requirements


def measure(value: float | None, ci: tuple[float, float] | None, direction: str | None = "higher") -> dict[str, Any]:
    return {"value": value, "ci": list(ci) if ci else None, "n": 10, "n_empty": 0, "direction": direction}


@pytest.fixture
def report() -> dict[str, Any]:
    return {
        "candidates": [
            {"name": "base", "measures": {"stability.ssim": measure(0.50, (0.45, 0.55)),
                                          "entropy.spatial": measure(0.40, (0.35, 0.45), "lower"),
                                          "oos.set": measure(0.1, (-0.1, 0.3), None)}},
            {"name": "new", "measures": {"stability.ssim": measure(0.70, (0.66, 0.74)),
                                         "entropy.spatial": measure(0.60, (0.55, 0.65), "lower"),
                                         "oos.set": measure(None, None, None)}},
        ],
        "comparison": {
            "candidates": ["base", "new"],
            "pareto_set": ["base", "new"],
            "measures": {
                "stability.ssim": {
                    "direction": "higher",
                    "ranking": [{"candidate": "new", "rank": 1, "value": 0.7, "tied_with": []},
                                {"candidate": "base", "rank": 2, "value": 0.5, "tied_with": []}],
                    # stored as base - new: the gate must flip it for new - base
                    "paired_differences": [{"a": "base", "b": "new", "mean_diff": -0.2, "ci": [-0.25, -0.15],
                                            "better": "new"}],
                },
                "entropy.spatial": {
                    "direction": "lower",
                    "ranking": [{"candidate": "base", "rank": 1, "value": 0.4, "tied_with": []},
                                {"candidate": "new", "rank": 2, "value": 0.6, "tied_with": []}],
                    "paired_differences": [{"a": "base", "b": "new", "mean_diff": -0.2, "ci": [-0.26, -0.14],
                                            "better": "base"}],
                },
            },
        },
    }


def test_parse_forms() -> None:
    r = parse_requirement("stability.ssim>=0.6")
    assert (r.measure, r.op, r.stat, r.threshold, r.reference) == ("stability.ssim", ">=", "value", 0.6, None)
    r = parse_requirement(" entropy.spatial:ci_high <= 5e-1 ")
    assert (r.measure, r.op, r.stat, r.threshold) == ("entropy.spatial", "<=", "ci_high", 0.5)
    r = parse_requirement("agreement.human.ssim:rank<2")
    assert (r.measure, r.stat, r.op, r.threshold) == ("agreement.human.ssim", "rank", "<", 2.0)
    r = parse_requirement("stability.ssim>=@base-0.02")
    assert (r.reference, r.margin, r.threshold) == ("base", -0.02, None)
    assert parse_requirement("degradation.deletion>@base").margin == 0.0


@pytest.mark.parametrize("text", ["stability.ssim", "stability.ssim=>0.6", "stability.ssim>=high",
                                  "stability.ssim:median>=0.5", "stability.ssim:ci_low>=@base", ">=0.5",
                                  "stability.ssim>=nan"])
def test_parse_errors_say_what_to_write(text: str) -> None:
    with pytest.raises(RequirementError) as exc:
        parse_requirement(text)
    assert repr(text) in str(exc.value) or text.strip() in str(exc.value)


def test_no_requirement_is_a_usage_error() -> None:
    with pytest.raises(RequirementError, match="at least one"):
        parse_requirements([])


def test_absolute_checks_say_by_how_much(report: dict[str, Any]) -> None:
    res = evaluate(report, parse_requirements(["stability.ssim>=0.6", "entropy.spatial<=0.5"]))
    by = {(c.candidate, c.requirement.measure): c for c in res.checks}
    assert not res.passed and len(res.checks) == 4 and len(res.failures) == 2
    fail = by[("base", "stability.ssim")]
    assert not fail.passed and fail.margin == pytest.approx(-0.1)
    assert "short by 0.1" in fail.message and "needs >= 0.6" in fail.message
    over = by[("new", "entropy.spatial")]
    assert not over.passed and "over by 0.1" in over.message
    assert by[("new", "stability.ssim")].passed and by[("base", "entropy.spatial")].passed
    table = format_table(res)
    assert table.splitlines()[0].split() == ["RESULT", "CANDIDATE", "REQUIREMENT", "ACTUAL", "TARGET", "MARGIN"]
    assert sum(line.startswith("FAIL") for line in table.splitlines()) == 2


def test_statistics_and_candidate_selection(report: dict[str, Any]) -> None:
    res = evaluate(report, parse_requirements(["stability.ssim:ci_low>=0.65", "stability.ssim:rank<=1"]), ["new"])
    assert res.passed and [c.candidate for c in res.checks] == ["new", "new"]
    res = evaluate(report, parse_requirements(["stability.ssim:ci_low>=0.65"]), ["base"])
    assert not res.passed and res.checks[0].actual == 0.45


def test_relative_checks_use_paired_differences(report: dict[str, Any]) -> None:
    # new - base = +0.2 [0.15, 0.25] on stability: no regression, and a proven improvement.
    res = evaluate(report, parse_requirements(["stability.ssim>=@base", "stability.ssim>@base+0.1"]))
    assert res.passed and {c.candidate for c in res.checks} == {"new"}  # the reference is not checked
    assert res.checks[0].actual == pytest.approx(0.2) and res.checks[0].ci == (0.15, 0.25)
    # Entropy, lower is better: new - base = +0.2 [0.14, 0.26] is a significant regression...
    res = evaluate(report, parse_requirements(["entropy.spatial<=@base"]))
    assert not res.passed and "significantly above base by at least 0.14" in res.checks[0].message
    # ... unless the allowed margin covers it.
    assert evaluate(report, parse_requirements(["entropy.spatial<=@base+0.3"])).passed


def test_missing_values_fail_and_unknown_names_are_usage_errors(report: dict[str, Any]) -> None:
    res = evaluate(report, parse_requirements(["oos.set>=0"]))
    assert not res.passed and "has no value" in res.failures[0].message
    with pytest.raises(RequirementError, match="no measure 'stability.nope'"):
        evaluate(report, parse_requirements(["stability.nope>=0"]))
    with pytest.raises(RequirementError, match="unknown candidate"):
        evaluate(report, parse_requirements(["stability.ssim>=0"]), ["ghost"])
    with pytest.raises(RequirementError, match="no candidate 'ghost'"):
        evaluate(report, parse_requirements(["stability.ssim>=@ghost"]))
    with pytest.raises(RequirementError, match="no paired comparison"):
        evaluate(report, parse_requirements(["oos.set>=@base"]))
    with pytest.raises(RequirementError, match="nothing to check"):
        evaluate(report, parse_requirements(["stability.ssim>=@base"]), ["base"])
