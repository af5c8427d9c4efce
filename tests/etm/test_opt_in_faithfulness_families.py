"""The opt-in families of #20 (sparseness, localisation, robustness, faithfulness) through ``etm.evaluation`` on
the benchmark: each appears in the report with CIs and its parameters, a sharded job merges to the unsharded
report, default jobs do not run them, and bad parameters are refused with BadInput."""

from __future__ import annotations

import json

import jsonschema
import pytest

from benchdata import paths
from benchdata.replicate import ensure_data
from etm.errors import BadInput
from etm.evaluation import evaluate, finish, run_inset
from etm.measures import MEASURES, default_measure_names
from etm.measures.params import check_measure_params
from etm.spec import EvaluationSpec

SCHEMA = json.loads((paths.REPO_ROOT / "openapi" / "report.schema.json").read_text())
N_IMAGES = 12
# Small but real settings, so each family runs in seconds on two CPU cores.
FAST = {
    "sparseness": {},
    "localisation": {"k": 500},
    "robustness": {"n_samples": 2},
    "faithfulness": {"percentages": [20, 60], "steps": [0, 50, 100]},
}
VARIANTS = {
    "sparseness": ["entropy.sparseness"],
    "localisation": ["agreement.rank_accuracy", "agreement.pointing_game", "agreement.topk_intersection"],
    "robustness": ["robustness.max_sensitivity", "robustness.avg_sensitivity"],
    "faithfulness": ["degradation.road", "degradation.insertion"],
}


def _spec(family: str, **extra) -> EvaluationSpec:
    ensure_data()
    return EvaluationSpec(
        candidates=[{"name": "xent", "models": [str(p) for p in paths.family_files("xent", "onnx")[:2]]}],
        dataset=str(paths.FACES_DIR),
        split="test",
        measures=[family],
        measure_params={family: FAST[family]},
        max_images=N_IMAGES,
        batch_size=4,
        bootstrap_resamples=100,
        **extra,
    )


def _numbers(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["provenance"].pop("timing")
    return report


def test_opt_in_families_are_not_default() -> None:
    everything = EvaluationSpec(candidates=[{"name": "x", "models": ["unused"]}], dataset="unused", measures=["all"])
    for family in VARIANTS:
        assert MEASURES[family].opt_in and family not in default_measure_names()
        default = EvaluationSpec(candidates=[{"name": "x", "models": ["unused"]}], dataset="unused")
        assert family not in everything.measures and family not in default.measures


@pytest.mark.parametrize("family", list(VARIANTS))
def test_family_reports_with_cis_and_parameters_and_shards_merge(family: str) -> None:
    spec = _spec(family)
    whole = evaluate(spec)
    results = whole.report["candidates"][0]["measures"]
    assert sorted(results) == sorted(VARIANTS[family])
    for name in VARIANTS[family]:
        r = results[name]
        assert r["value"] is not None and r["ci"] is not None and r["ci"][0] <= r["value"] <= r["ci"][1], (name, r)
        assert r["n"] > 0 and r["parameters"], (name, r)
        for k, v in FAST[family].items():
            if k in r["parameters"]:
                assert r["parameters"][k] == v, (name, k)
        print(f"{name}: {r['value']:.4f} CI [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] n={r['n']}")
    assert whole.report["candidates"][0]["passes_per_image"][family]
    jsonschema.validate(json.loads(json.dumps(whole.report)), SCHEMA)  # the report schema is generic: no change
    merged = finish(spec, [run_inset(spec, shard=(i, 2)) for i in range(2)])
    assert _numbers(merged.report) == _numbers(whole.report)
    assert merged.per_image_csv() == whole.per_image_csv()


BAD = [
    ("sparseness", {"map": "pixels"}, "map"),
    ("localisation", {"mask_threshold": 0.0}, "mask_threshold"),
    ("localisation", {"k": 0}, "k"),
    ("robustness", {"radius": -0.1}, "radius"),
    ("robustness", {"n_samples": 0}, "n_samples"),
    ("faithfulness", {"percentages": [50, 20]}, "percentages"),
    ("faithfulness", {"percentages": [0, 100]}, "percentages"),
    ("faithfulness", {"insertion_start": "noise"}, "insertion_start"),
    ("faithfulness", {"steps": [0]}, "steps"),
    ("faithfulness", {"variants": ["degradation.deletion"]}, "variants"),
    ("faithfulness", {"mean_color": [0.5, 2.0, 0.5]}, "mean_color"),
    ("faithfulness", {"noise": -1.0}, "noise"),
    ("robustness", {"map": "pixels"}, "map"),
    ("sparseness", {"threshold": 0.5}, "threshold"),
]


@pytest.mark.parametrize(("family", "params", "word"), BAD)
def test_bad_parameters_are_bad_input(family: str, params: dict, word: str) -> None:
    # The spec's own validation runs the same check (a pydantic error wrapping this message, 422 at the API);
    # built without validation, the check itself raises BadInput.
    spec = EvaluationSpec.model_construct(measures=[family], measure_params={family: params}, bootstrap_resamples=100)
    with pytest.raises(BadInput) as err:
        check_measure_params(spec)
    assert word in str(err.value) and family in str(err.value)
    print(err.value)
    with pytest.raises(ValueError, match=word):
        EvaluationSpec(candidates=[{"name": "x", "models": ["unused"]}], dataset="unused",
                       measures=[family], measure_params={family: params})


def test_topk_larger_than_the_image_is_bad_input() -> None:
    spec = _spec("localisation").model_copy(update={"measure_params": {"localisation": {"k": 64 * 64 + 1}}})
    with pytest.raises(BadInput, match="k = 4097 exceeds the 64x64"):
        evaluate(spec)
