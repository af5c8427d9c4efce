"""Job admission: a job spec (ids, not paths) checked against the registry, and its result-cache key.

Every rule here is the domain's own, called on the registry's records instead of on loaded models and
opened datasets: method availability and input sizes (``etm.models.compatibility``), the target class,
method parameters (``etm.salience.registry``), measure parameters (``etm.measures.params``) and the
split (``etm.datasets.splits``). A job admitted here therefore fails later only for what records cannot
tell (the images themselves, the model's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etm.datasets.splits import choose_split
from etm.errors import BadInput, DatasetError
from etm.measures import MEASURES_VERSION, needs_salience
from etm.measures.params import check_measure_params, measure_for
from etm.models.base import Capability, n_classes
from etm.models.compatibility import check_input_sizes, require_method, target_index
from etm.salience.registry import check_method_params
from etm.spec import EvaluationSpec
from etm.text import check_utf8
from jobs.registry import Registry, UnknownReference
from jobs.storage import canonical_sha256

CACHE_KEY_VERSION = "etm-result-v2"  # v2: reports carry warnings (schema 1.1); v1 results lack them


@dataclass
class CheckedSpec:
    """A job spec checked against the registry: the records it references, and its cache key."""

    spec: EvaluationSpec
    models: dict[str, dict[str, Any]]
    dataset: dict[str, Any]
    ood_dataset: dict[str, Any] | None
    n_images: int
    cache_key: str
    tenant: str | None = None


def check_spec(registry: Registry, spec: EvaluationSpec) -> CheckedSpec:
    """Check an API job spec against what ``registry`` (one tenant's view) holds.

    Raises:
        UnknownReference: model or dataset ids that are not registered (all named).
        MethodUnavailable: the method is unavailable for a model (the capability table's reason).
        BadInput: a split that does not exist, mixed input sizes, bad measure or method parameters,
            an unknown target class, text that is not valid UTF-8.
    """
    check_utf8(spec.canonical(), "the job")  # a job record no response can encode would break GET /v1/jobs

    ids = list(dict.fromkeys(m for c in spec.candidates for m in c.models))
    models = {i: registry.get_model(i) for i in ids}
    missing_models = [i for i, r in models.items() if r is None]
    dataset = registry.get_dataset(spec.dataset)
    ood = registry.get_dataset(spec.ood_dataset) if spec.ood_dataset is not None else None
    missing_ds = [spec.dataset] if dataset is None else []
    if spec.ood_dataset is not None and ood is None:
        missing_ds.append(spec.ood_dataset)
    if missing_models or missing_ds:
        parts = []
        if missing_models:
            parts.append(f"unknown model id(s) {missing_models} (see GET /v1/models)")
        if missing_ds:
            parts.append(f"unknown dataset id(s) {missing_ds} (see GET /v1/datasets)")
        raise UnknownReference("; ".join(parts))
    assert dataset is not None
    recs: dict[str, dict[str, Any]] = {i: r for i, r in models.items() if r is not None}

    uses_method = needs_salience(spec.measures)  # an accuracy-only job runs no salience method
    for cand in spec.candidates:
        for mid in cand.models if uses_method else ():
            require_method(capabilities(recs[mid]), spec.method, f"candidate {cand.name!r}, model {mid}")
        check_input_sizes(cand.name, (recs[m]["metadata"]["input_size"] for m in cand.models))
        first = recs[cand.models[0]]
        classes = n_classes(first["num_outputs"])
        target_index(spec.target, first["metadata"]["class_names"] or [], classes, f"candidate {cand.name!r}'s")

    check_method_params(spec.method, spec.method_params)  # names, types and ranges, as declared per method
    check_measure_params(spec)

    split = _split(dataset, spec.split, "split")
    if ood is not None:
        _split(ood, spec.ood_split, "ood_split")
    elif spec.ood_split is not None:
        raise BadInput("ood_split is given but ood_dataset is not")
    n_images = next(s["n_images"] for s in dataset["splits"] if s["split"] == split)
    if spec.max_images is not None:
        n_images = min(n_images, spec.max_images)
    for name in spec.measures:  # e.g. strategies: too few images to cluster
        measure_for(spec, name).check_images(n_images)
    return CheckedSpec(spec, recs, dataset, ood, n_images, cache_key(spec, recs, dataset, ood), tenant=registry.tenant)


def capabilities(record: dict[str, Any]) -> dict[str, Capability]:
    """A model record's capability table as the domain's ``Capability`` objects."""
    return {m: Capability(c["method"], bool(c["available"]), c["reason"]) for m, c in record["capabilities"].items()}


def _split(record: dict[str, Any], split: str | None, field: str) -> str | None:
    """The split of a dataset record a job uses (``choose_split``, the rule ``load_dataset`` applies)."""
    names = [s["split"] for s in record["splits"]] if record["has_splits"] else []
    try:
        return choose_split(names, split, f"dataset {record['id']}", field)
    except DatasetError as exc:  # the request's field is wrong, not the dataset
        raise BadInput(str(exc)) from exc


def cache_key(
    spec: EvaluationSpec,
    models: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    ood: dict[str, Any] | None,
) -> str:
    """sha256 of what determines the report: model bytes and effective metadata, dataset content,
    the canonical config and the measures' version."""
    payload = {
        "v": CACHE_KEY_VERSION,
        "models": {c.name: [[models[m]["sha256"], models[m]["metadata"]] for m in c.models] for c in spec.candidates},
        "dataset": dataset["sha256"],
        "ood_dataset": ood["sha256"] if ood is not None else None,
        "config": spec.canonical(),
        "measures_version": MEASURES_VERSION,
    }
    return canonical_sha256(payload)
