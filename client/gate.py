"""Requirements on a report, for CI gates: parse ``"stability.ssim>=0.6"`` and check it per candidate.

Grammar (spaces allowed around the operator)::

    MEASURE[:STAT] OP TARGET
    STAT    value (default) | ci_low | ci_high | rank
    OP      >= | <= | > | <
    TARGET  a number                       e.g.  entropy.spatial<=0.5, stability.ssim:ci_low>=0.55
          | @CANDIDATE[(+|-)MARGIN]        e.g.  stability.ssim>=@baseline-0.02

An absolute target compares the candidate's statistic with the number.

A ``@CANDIDATE`` target compares two candidates of the same job on the same images, with the paired
difference ``d = candidate - reference`` and its 95% bootstrap CI ``[lo, hi]`` from the report's
comparison (so it works for directed measures only). It asks for *evidence*, not for a point estimate:

- ``>= @ref+m`` fails when the candidate is significantly below ``ref + m`` (``hi < m``): "no regression";
- ``<= @ref+m`` fails when it is significantly above (``lo > m``);
- ``> @ref+m`` passes only when it is significantly above (``lo > m``): "a proven improvement";
- ``< @ref+m`` passes only when it is significantly below (``hi < m``).

The reference candidate itself is not checked against itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal[">=", "<=", ">", "<"]
STATS = ("value", "ci_low", "ci_high", "rank")

_REQ = re.compile(
    r"^\s*(?P<measure>[A-Za-z0-9_.+\-]+?)(?::(?P<stat>[a-z_]+))?\s*(?P<op>>=|<=|>|<)\s*(?P<target>.+?)\s*$"
)
_REF = re.compile(r"^@(?P<ref>[A-Za-z0-9_.\-]+?)(?:\s*(?P<sign>[+-])\s*(?P<margin>[0-9.eE+\-]+))?$")


class RequirementError(ValueError):
    """A requirement that cannot be parsed or does not fit the report (a usage error, exit code 2)."""


@dataclass(frozen=True)
class Requirement:
    text: str
    measure: str
    op: Op
    stat: str = "value"
    threshold: float | None = None  # absolute target
    reference: str | None = None  # relative target: the other candidate
    margin: float = 0.0

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Check:
    """One requirement checked on one candidate."""

    candidate: str
    requirement: Requirement
    passed: bool
    actual: float | None  # the statistic, or the paired difference's mean for a relative requirement
    target: float | None  # the threshold, or the margin for a relative requirement
    margin: float | None  # how far inside (+) or outside (-) the requirement the candidate is
    ci: tuple[float | None, float | None] | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "requirement": self.requirement.text,
            "measure": self.requirement.measure,
            "stat": self.requirement.stat,
            "op": self.requirement.op,
            "reference": self.requirement.reference,
            "passed": self.passed,
            "actual": self.actual,
            "target": self.target,
            "margin": self.margin,
            "ci": list(self.ci) if self.ci else None,
            "message": self.message,
        }


@dataclass
class GateResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "n_checks": len(self.checks),
            "n_failed": len(self.failures),
            "checks": [c.as_dict() for c in self.checks],
        }


def _number(text: str, req: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise RequirementError(
            f"requirement {req!r}: the target {text!r} is neither a number nor @CANDIDATE[+-MARGIN]"
        ) from None
    if not math.isfinite(x):
        raise RequirementError(f"requirement {req!r}: the target must be a finite number")
    return x


def parse_requirement(text: str) -> Requirement:
    """Parse one requirement (see the module's docstring); raises ``RequirementError``."""
    m = _REQ.match(text)
    if not m:
        raise RequirementError(
            f"cannot read requirement {text!r}; write MEASURE[:STAT] OP TARGET, e.g. 'stability.ssim>=0.6', "
            "'entropy.spatial:ci_high<=0.5' or 'stability.ssim>=@baseline-0.02'"
        )
    stat = m["stat"] or "value"
    if stat not in STATS:
        raise RequirementError(f"requirement {text!r}: unknown statistic {stat!r}; choose from {list(STATS)}")
    op: Op = m["op"]  # type: ignore[assignment]
    target = m["target"]
    if target.startswith("@"):
        r = _REF.match(target)
        if not r:
            raise RequirementError(f"requirement {text!r}: write a relative target as @CANDIDATE, @CANDIDATE+0.01 "
                                   "or @CANDIDATE-0.02")
        if stat != "value":
            raise RequirementError(f"requirement {text!r}: a @CANDIDATE target compares values; drop ':{stat}'")
        margin = _number(r["margin"], text) if r["margin"] else 0.0
        if r["sign"] == "-":
            margin = -margin
        return Requirement(text.strip(), m["measure"], op, stat, reference=r["ref"], margin=margin)
    return Requirement(text.strip(), m["measure"], op, stat, threshold=_number(target, text))


def parse_requirements(texts: Iterable[str]) -> list[Requirement]:
    out = [parse_requirement(t) for t in texts]
    if not out:
        raise RequirementError("give at least one requirement (--require 'MEASURE>=VALUE')")
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.4g}"


def _holds(actual: float, op: Op, target: float) -> bool:
    return {">=": actual >= target, "<=": actual <= target, ">": actual > target, "<": actual < target}[op]


def _absolute(report: dict[str, Any], cand: dict[str, Any], req: Requirement) -> Check:
    name = cand["name"]
    m = cand["measures"][req.measure]
    ci = m.get("ci")
    assert req.threshold is not None
    if req.stat == "rank":
        entry = _rank_entry(report, req, name)
        actual = float(entry["rank"])
    elif req.stat == "value":
        actual = m.get("value")
    else:
        actual = ci[0 if req.stat == "ci_low" else 1] if ci else None
    label = req.measure if req.stat == "value" else f"{req.measure}:{req.stat}"
    if actual is None or (isinstance(actual, float) and not math.isfinite(actual)):
        return Check(name, req, False, None, req.threshold, None, None,
                     f"{name}: {label} has no value (the measure could not be computed: n={m.get('n')}, "
                     f"empty maps={m.get('n_empty')}); needs {req.op} {_fmt(req.threshold)}")
    ok = _holds(actual, req.op, req.threshold)
    inside = actual - req.threshold if req.op in (">=", ">") else req.threshold - actual
    ci_txt = f" (95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}])" if ci and req.stat == "value" else ""
    if ok:
        msg = f"{name}: {label} = {_fmt(actual)}{ci_txt} {req.op} {_fmt(req.threshold)} (by {_fmt(abs(inside))})"
    else:
        word = "short by" if req.op in (">=", ">") else "over by"
        msg = (f"{name}: {label} = {_fmt(actual)}{ci_txt}, needs {req.op} {_fmt(req.threshold)} "
               f"({word} {_fmt(abs(inside))})")
    return Check(name, req, ok, actual, req.threshold, inside, tuple(ci) if ci else None, msg)


def _rank_entry(report: dict[str, Any], req: Requirement, name: str) -> dict[str, Any]:
    cmp_m = (report.get("comparison") or {}).get("measures", {}).get(req.measure)
    if cmp_m is None:
        raise RequirementError(f"requirement {req.text!r}: {req.measure} has no ranking (it has no preferred "
                               "direction, or not every candidate has it)")
    return next(e for e in cmp_m["ranking"] if e["candidate"] == name)


def _difference(report: dict[str, Any], req: Requirement, a: str, b: str) -> dict[str, Any]:
    cmp_m = (report.get("comparison") or {}).get("measures", {}).get(req.measure)
    if cmp_m is None:
        raise RequirementError(f"requirement {req.text!r}: {req.measure} has no paired comparison (it has no "
                               "preferred direction); compare it with a number instead")
    for d in cmp_m["paired_differences"]:
        if (d["a"], d["b"]) == (a, b):
            return {"mean_diff": d.get("mean_diff"), "ci": d.get("ci")}
        if (d["a"], d["b"]) == (b, a):
            ci = d.get("ci")
            flipped = [None if ci[1] is None else -ci[1], None if ci[0] is None else -ci[0]] if ci else None
            md = d.get("mean_diff")
            return {"mean_diff": None if md is None else -md, "ci": flipped}
    raise RequirementError(f"requirement {req.text!r}: no paired difference of {a} and {b} in the report")


def _relative(report: dict[str, Any], name: str, req: Requirement) -> Check:
    assert req.reference is not None
    d = _difference(report, req, name, req.reference)
    ci, md, m = d["ci"], d["mean_diff"], req.margin
    ref = req.reference
    against = f"{ref}{'+' if m > 0 else '-' if m < 0 else ''}{_fmt(abs(m)) if m else ''}"
    if not ci or ci[0] is None or ci[1] is None:
        return Check(name, req, False, md, m, None, None,
                     f"{name}: {req.measure} vs {ref}: the paired difference has no confidence interval")
    lo, hi = ci
    diff_txt = f"{name} - {ref} = {_fmt(md)} (95% CI [{_fmt(lo)}, {_fmt(hi)}])"
    if req.op == ">=":
        ok, inside = not hi < m, hi - m
        why = f"significantly below {against} by at least {_fmt(m - hi)}"
    elif req.op == "<=":
        ok, inside = not lo > m, m - lo
        why = f"significantly above {against} by at least {_fmt(lo - m)}"
    elif req.op == ">":
        ok, inside = lo > m, lo - m
        why = f"not significantly above {against} (the CI reaches {_fmt(lo)})"
    else:
        ok, inside = hi < m, m - hi
        why = f"not significantly below {against} (the CI reaches {_fmt(hi)})"
    msg = f"{name}: {req.measure}: {diff_txt}" + ("" if ok else f"; {why}")
    return Check(name, req, ok, md, m, inside, (lo, hi), msg)


def evaluate(report: dict[str, Any], requirements: Sequence[Requirement],
             candidates: Sequence[str] | None = None) -> GateResult:
    """Check every requirement on every selected candidate (all candidates when ``candidates`` is empty).

    Raises:
        RequirementError: an unknown candidate or measure, or a statistic the report cannot give.
    """
    by_name = {c["name"]: c for c in report.get("candidates", [])}
    names = list(candidates) if candidates else list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise RequirementError(f"unknown candidate(s) {unknown}; the report has {list(by_name)}")
    all_measures = sorted({m for c in by_name.values() for m in c.get("measures", {})})
    result = GateResult()
    for req in requirements:
        if req.reference is not None and req.reference not in by_name:
            raise RequirementError(f"requirement {req.text!r}: no candidate {req.reference!r}; "
                                   f"the report has {list(by_name)}")
        for name in names:
            if req.measure not in by_name[name].get("measures", {}):
                raise RequirementError(f"requirement {req.text!r}: the report has no measure {req.measure!r} for "
                                       f"{name}; it has {all_measures}")
            if req.reference is not None:
                if name == req.reference:
                    continue
                result.checks.append(_relative(report, name, req))
            else:
                result.checks.append(_absolute(report, by_name[name], req))
    if not result.checks:
        raise RequirementError("nothing to check: the only candidate selected is the reference itself")
    return result


def format_table(result: GateResult) -> str:
    """A fixed-width table of the checks (one line per candidate and requirement)."""
    rows = [("RESULT", "CANDIDATE", "REQUIREMENT", "ACTUAL", "TARGET", "MARGIN")]
    for c in result.checks:
        target = (f"@{c.requirement.reference}{c.target:+g}" if c.requirement.reference and c.target
                  else f"@{c.requirement.reference}" if c.requirement.reference else _fmt(c.target))
        rows.append((
            "pass" if c.passed else "FAIL",
            c.candidate,
            c.requirement.text,
            _fmt(c.actual),
            target,
            "n/a" if c.margin is None else f"{c.margin + 0.0:+.4g}",  # + 0.0: no "-0"
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
