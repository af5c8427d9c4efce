"""The benchmarks' correctness checks run, and pass, on toy sizes (the figures themselves are
meaningless at these sizes; ``make bench`` measures them). Anchor comparisons are skipped by the
benchmarks when the ``bench`` extra (captum, grad-cam, torchcam, quantus) is not installed."""

from __future__ import annotations

import pytest
import torch

from bench.common import have


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _assert_checks(rep) -> None:
    failed = [f"{c.name}: {c.detail}" for c in rep.checks if not c.ok]
    assert not failed, failed
    assert rep.rows, "the figure produced no rows"


def test_salience_fast_path_agrees_with_anchors():
    from bench import salience

    rep = salience.run(batch=2, size=32, reps=1, build=salience.build_tiny, model_name="tinynet",
                       layer_name="features")
    _assert_checks(rep)
    names = {c.name for c in rep.checks}
    assert "native maps ONNX fast path vs .pt2 autograd" in names
    if have("pytorch_grad_cam", "torchcam", "captum"):
        assert {"native maps vs pytorch-grad-cam", "native maps vs torchcam", "native maps vs captum"} <= names


def test_evaluation_counts_passes():
    from bench import evaluation

    rep = evaluation.run(n_images=8, reps=1, quick=True)
    _assert_checks(rep)
    assert any(r.name == "evaluation / bare passes" for r in rep.rows)


def test_degradation_curves_agree_with_anchors():
    from bench import degradation

    rep = degradation.run(n_images=3, road_images=1, reps=1, quick=True)
    _assert_checks(rep)
    if have("quantus"):
        assert {"MoRF curve = Quantus PixelFlipping", "MoRF score drops = Quantus RegionPerturbation"} <= {
            c.name for c in rep.checks
        }


def test_ssim_and_entropy_equal_skimage():
    from bench import maps

    rep = maps.run(n_maps=500, n_anchor=50, reps=1)
    _assert_checks(rep)


def test_a_failed_check_makes_the_run_fail(capsys):
    from bench.common import Report
    from bench.run import print_reports

    rep = Report("x", "toy")
    rep.check("disagrees", False, "on purpose")
    assert print_reports([rep]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_service_overhead_figure_checks_its_answers():
    """Figure 6 of ``bench.run`` on a tiny service: rows in the table, and the cache hits checked for
    202/succeeded/cache_hit and the computed report's exact bytes."""
    from bench import service_overhead

    rep = service_overhead.figure(clients=2, rounds=1, phase_seconds=0.5, think=0.1)
    _assert_checks(rep)
    assert rep.figure == "6"
    assert any(r.name.startswith("cache hit") and r.target == "< 50" for r in rep.rows)
    hits = next(c for c in rep.checks if c.name.startswith("cache hits"))
    assert hits.ok and not hits.detail.startswith("0 right")


def test_a_wrong_cache_hit_fails_figure_6(capsys):
    from bench.run import print_reports
    from bench.service_overhead import PHASES, to_report

    rows = {p: {"n": 10, "p50_ms": 5.0, "p99_ms": 9.0} for p in PHASES}
    res = {"clients": 2, "think_s": 0.1, "rounds": 1, "phase_seconds": 0.5, "rows": rows, "met": True,
           "target_e2e_p99_ms": 50.0, "ratios": dict.fromkeys(
               ("status_p50_vs_anchor", "status_p99_vs_anchor", "e2e_p50_vs_anchor", "e2e_p99_vs_anchor"), 1.0),
           "answers": {"ok": dict.fromkeys(PHASES, 10), "wrong": {**dict.fromkeys(PHASES, 0), PHASES[2]: 1},
                       "examples": [f"{PHASES[2]}: report of cache hit j-1 differs from the computed one"],
                       "report_bytes": 100}}
    assert print_reports([to_report(res)]) == 1
    assert "differs from the computed one" in capsys.readouterr().out


def test_sanity_cost_figure_agrees_with_quantus():
    from bench import sanity

    rep = sanity.run(n_images=4, reps=1, quick=True)
    _assert_checks(rep)
    if have("quantus"):
        assert "MPRT per layer = Quantus MPRT" in {c.name for c in rep.checks}


def test_strategies_adds_no_pass_and_recovers_planted_groups():
    from bench import strategies

    rep = strategies.run(n_images=16, n_maps=300, reps=1, quick=True)
    _assert_checks(rep)
    assert {"strategies: model passes per image beyond the clean pass", "cluster 300 maps at 7x7",
            "cluster 300 maps at 56x56"} <= {r.name for r in rep.rows}
