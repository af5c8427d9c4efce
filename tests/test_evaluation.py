"""The evaluation plan: shards merge to the unsharded report, even with more shards than batches."""

from __future__ import annotations

import json
from pathlib import Path

from service.evaluation import evaluate, finish, run_inset, shard_indices
from service.spec import EvaluationSpec


def _numbers(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["provenance"].pop("timing")
    return report


def test_more_shards_than_batches_still_merge(family_onnx: list[Path], dataset_dir: Path) -> None:
    spec = EvaluationSpec(
        candidates=[{"name": "fam", "models": [str(p) for p in family_onnx]}],
        dataset=str(dataset_dir),
        measures=["entropy", "stability"],
        batch_size=8,
        bootstrap_resamples=200,
    )
    assert [len(shard_indices(24, 8, (i, 5))) for i in range(5)] == [0, 8, 0, 8, 8]  # 3 batches, 5 shards
    parts = [run_inset(spec, shard=(i, 5)) for i in range(5)]
    merged = finish(spec, parts)
    whole = evaluate(spec)
    assert _numbers(merged.report) == _numbers(whole.report)
    assert merged.per_image_csv() == whole.per_image_csv()
