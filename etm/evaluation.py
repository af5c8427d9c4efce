"""The evaluation plan: one entry point that scores candidates on a dataset.

A job is a set of passes over batches. For each batch and each run of a candidate family, the
clean salience is computed once and shared by every measure; measures then ask for the extra
passes they need (transformed, noisy, degraded images). Batches stream from disk, so memory does
not grow with the number of images except for the per-image result columns.

Sharding: ``run_inset(spec, shard=(i, n))`` processes a contiguous, batch-aligned range of the
in-set images, so every image sees exactly the batch it sees in an unsharded run and the numbers
are bitwise identical. ``finish`` concatenates the shards' columns in order, runs the out-of-set
pass (whose measures may need state from the whole in-set: ``Measure.inset_state``, summed over batches
and shards, then ``Measure.finish_inset``) and summarises. ``evaluate`` = ``finish(run_inset())``.
Datasets are opened through their validation index (``etm.datasets.open_dataset``) once one
exists: a shard then reads, validates and decodes only the images of its own range, and ``finish``
reads no in-set image at all (it merges columns; the out-of-set pass reads the out-of-set images).

Runtime faults: a forward pass that gives NaN/Inf or the wrong shape raises ``ModelRuntimeError`` naming
the candidate, the model and the images. A batch that does not fit in memory (PyTorch or ONNX Runtime
allocation failure) is halved and retried down to one image; every measure is per image and every
random draw is keyed by the image (``image_seeds``), so the numbers do not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from etm.datasets import Dataset, content_sha256, iter_batches, open_dataset
from etm.datasets.batches import Batch
from etm.errors import BadInput, Canceled, ModelRuntimeError
from etm.measures import needs_salience
from etm.measures.base import BatchContext, Columns, Measure
from etm.measures.params import measure_for
from etm.models import checks, randomization
from etm.models.base import Model, ModelOutOfMemory, OutputNotFinite, is_out_of_memory, release_memory
from etm.models.compatibility import check_input_sizes, require_method
from etm.models.loader import load_model
from etm.report import EvaluationResult, build_report
from etm.salience.registry import compute_salience, explain_targets, forward_only
from etm.spec import EvaluationSpec

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
log = logging.getLogger(__name__)
CHECKS = "_checks"  # the columns behind the report's warnings; not a measure, not in per_image.csv


@dataclass
class Resolver:
    """How spec names become files: identity for the CLI, id lookups for the service.

    Loaded models and datasets are cached by path (the service's paths are content-addressed), so the
    in-set pass, ``finish`` and the artifacts share one opened dataset. Datasets are opened with
    ``open_dataset``: after the first full validation of a folder, opening it reads no image, and each
    pass validates only the images it reads (``iter_batches`` verifies them), each once per process.
    """

    model_path: Callable[[str], Path] = Path
    dataset_path: Callable[[str], Path] = Path
    model_cache: dict[str, Model] = field(default_factory=dict)
    dataset_cache: dict[tuple[str, str | None], Dataset] = field(default_factory=dict)
    threads: int = 0

    def model(self, ref: str) -> Model:
        path = self.model_path(ref)
        key = str(path)
        if key not in self.model_cache:
            self.model_cache[key] = load_model(path, threads=self.threads)
        return self.model_cache[key]

    def dataset(self, ref: str, split: str | None) -> Dataset:
        key = (str(self.dataset_path(ref)), split)
        if key not in self.dataset_cache:
            self.dataset_cache[key] = open_dataset(Path(key[0]), split=split)
        return self.dataset_cache[key]


@dataclass
class Partial:
    """What one shard of the in-set pass produces (serialisable with ``save``/``load``)."""

    shard: tuple[int, int]
    n_images: int
    columns: dict[str, dict[str, Columns]]  # candidate -> measure family -> columns
    inset: dict[str, dict[str, Columns]]  # candidate -> measure family -> summed ``Measure.inset_state``
    keys: list[str]
    seconds: dict[str, float]

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "keys": np.array(self.keys, dtype=str),
            "meta": np.array([self.shard[0], self.shard[1], self.n_images]),
        }
        for cand, fams in self.columns.items():
            for fam, cols in fams.items():
                for col, arr in cols.items():
                    arrays[f"col|{cand}|{fam}|{col}"] = arr
        for cand, fams in self.inset.items():
            for fam, sums in fams.items():
                for key, arr in sums.items():
                    arrays[f"ins|{cand}|{fam}|{key}"] = arr
        arrays["seconds"] = np.array([f"{k}={v}" for k, v in self.seconds.items()], dtype=str)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> Partial:
        with np.load(path, allow_pickle=False) as z:
            meta = z["meta"].tolist()
            columns: dict[str, dict[str, Columns]] = {}
            inset: dict[str, dict[str, Columns]] = {}
            for name in z.files:
                parts = name.split("|")
                if parts[0] in ("col", "ins"):
                    into = columns if parts[0] == "col" else inset
                    into.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[3]] = z[name]
            seconds = {s.split("=")[0]: float(s.split("=")[1]) for s in z["seconds"].tolist()}
            return cls(
                shard=(meta[0], meta[1]),
                n_images=meta[2],
                columns=columns,
                inset=inset,
                keys=z["keys"].tolist(),
                seconds=seconds,
            )


def image_seeds(seed: int, keys: Sequence[str]) -> torch.Tensor:
    """Per-image seeds from the job seed and the image key: the same wherever the image is processed."""
    return torch.tensor(
        [int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "little") >> 1 for k in keys],
        dtype=torch.int64,
    )


def shard_indices(n_images: int, batch_size: int, shard: tuple[int, int] | None) -> range:
    """Batch-aligned contiguous range of image indices for shard ``(i, n)``."""
    if shard is None:
        return range(n_images)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise BadInput(f"shard {i}/{n} is invalid: need 0 <= index < count")
    n_batches = math.ceil(n_images / batch_size)
    lo, hi = (i * n_batches) // n, ((i + 1) * n_batches) // n
    return range(min(lo * batch_size, n_images), min(hi * batch_size, n_images))


@dataclass
class Family:
    name: str
    models: list[Model]
    refs: list[str] = field(default_factory=list)  # the spec's model references, to name a failing run
    # The last randomised copy made for the sanity checks: ((run, layers, seed), model); see _context.
    randomized: tuple[Any, Any] = (None, None)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.models[0].metadata.input_size)  # type: ignore[return-value]


def load_families(spec: EvaluationSpec, resolver: Resolver) -> list[Family]:
    fams = []
    for cand in spec.candidates:
        models = [resolver.model(ref) for ref in cand.models]
        check_input_sizes(cand.name, (m.metadata.input_size for m in models))
        runs_method = needs_salience(spec.measures)  # accuracy alone runs no salience method
        for ref, m in zip(cand.models, models, strict=True) if runs_method else ():
            require_method(m.capabilities, spec.method, f"candidate {cand.name!r}, model {ref}")
        fams.append(Family(cand.name, models, list(cand.models)))
    return fams


def make_measures(spec: EvaluationSpec, family: Family) -> dict[str, Measure]:
    out: dict[str, Measure] = {}
    for name in spec.measures:
        m = measure_for(spec, name)
        if hasattr(m, "positive_index"):
            m.positive_index = family.models[0].metadata.positive_index  # type: ignore[attr-defined]
        m.pascore_class = pascore_class(spec, family)
        if hasattr(m, "layer_counts"):  # the sanity checks' cost depends on each run's number of layers
            m.layer_counts = [len(randomization.layers(model)) for model in family.models]  # type: ignore[attr-defined]
        out[name] = m
    return out


def pascore_class(spec: EvaluationSpec, family: Family) -> int | None:
    """The class whose sigmoid the measures report under ``score: pascore`` (the model's positive class:
    class 1, "synthetic", for the paper's detectors), or None for the target class's probability."""
    return family.models[0].metadata.positive_index if spec.score == "pascore" else None


def _label_index(models: Sequence[Model], labels: Sequence[str]) -> torch.Tensor:
    names = models[0].metadata.class_names or []
    return torch.tensor([names.index(lb) if lb in names else -1 for lb in labels], dtype=torch.long)


def _context(spec: EvaluationSpec, fam: Family, batch: Any) -> BatchContext:
    seeds = image_seeds(spec.seed, batch.keys)
    # Measures combine the batch with salience results, which live on the model's device (CUDA for .pt2
    # on a GPU worker; ONNX Runtime hands results back on the CPU).
    device = fam.models[0].device
    images = batch.images.to(device)

    def salience(run: int, images: torch.Tensor) -> Any:
        try:
            return compute_salience(
                fam.models[run], images, spec.method, spec.target, spec.layer, spec.method_params, seeds=seeds
            )
        except ModelRuntimeError as exc:
            raise _named_fault(exc, fam, run, batch.keys) from exc

    def logits(run: int, images: torch.Tensor) -> torch.Tensor:
        try:
            return fam.models[run].logits(images)
        except ModelRuntimeError as exc:
            raise _named_fault(exc, fam, run, batch.keys) from exc

    def clean_pass(run: int) -> Any:
        if needs_salience(spec.measures):
            return salience(run, images)
        try:
            return forward_only(fam.models[run], images, spec.target)
        except ModelRuntimeError as exc:
            raise _named_fault(exc, fam, run, batch.keys) from exc

    clean = [clean_pass(r) for r in range(len(fam.models))]

    def layers(run: int) -> list[str]:
        ref = fam.refs[run] if run < len(fam.refs) else f"#{run}"
        found = randomization.require_layers(fam.models[run], f"candidate {fam.name!r}, model {ref}")
        return [layer.name for layer in found]

    def explain(run: int, images: torch.Tensor, targets: torch.Tensor, layers: tuple[str, ...], seed: int) -> Any:
        model = fam.models[run]
        if layers:
            key = (run, layers, seed)
            if fam.randomized[0] != key:  # one randomised copy per family at a time: memory stays one model
                fam.randomized = (key, randomization.randomized(model, layers, seed))
            model = fam.randomized[1]
        try:
            return explain_targets(model, images, targets, spec.method, spec.layer, spec.method_params, seeds)
        except ModelRuntimeError as exc:
            raise _named_fault(exc, fam, run, batch.keys) from exc

    return BatchContext(
        keys=list(batch.keys),
        images=images,
        labels=_label_index(fam.models, batch.labels).to(device),
        masks=batch.masks.to(device) if bool(batch.has_mask.any()) else None,
        has_mask=batch.has_mask.to(device),
        image_seeds=seeds,
        clean=clean,
        salience_fn=salience,
        logits_fn=logits,
        probabilities_fn=lambda run, logits: fam.models[run].probabilities(logits),
        seed=spec.seed,
        pascore_class=pascore_class(spec, fam),
        layers_fn=layers,
        explain_fn=explain,
    )


def _named_fault(exc: ModelRuntimeError, fam: Family, run: int, keys: Sequence[str]) -> ModelRuntimeError:
    """The fault with the candidate, the model and the images it happened on, and what to check."""
    if isinstance(exc, ModelOutOfMemory) or str(exc).startswith("candidate "):
        return exc  # already says where
    ref = fam.refs[run] if run < len(fam.refs) else f"#{run}"
    rows = exc.rows if isinstance(exc, OutputNotFinite) else list(range(len(keys)))
    # Measures stack variants of the batch (shifted, noisy...) image-major, so row r is image r mod N.
    names = sorted({keys[r % len(keys)] for r in rows}) if keys else []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    advice = (
        "run the model on these images outside the service to reproduce it, and check its metadata (mean, std, "
        "channel_order, input_size): inputs scaled unlike in training can overflow"
        if isinstance(exc, OutputNotFinite)
        else "run the model on these images outside the service to reproduce it"
    )
    return ModelRuntimeError(f"candidate {fam.name!r}, model {ref} (run {run}): {exc}; images: {shown}. {advice}")


def _score_batch(
    spec: EvaluationSpec,
    fam: Family,
    batch: Batch,
    measures: dict[str, Measure],
    inset: dict[str, dict[str, Any]] | None,
) -> tuple[dict[str, Columns], dict[str, Columns]]:
    """Every measure's columns for one batch of one family, and on the in-set pass (``inset`` None) what each
    measure carries to the out-of-set pass (``Measure.inset_state``); on the out-of-set pass ``inset`` holds,
    per measure, what its ``finish_inset`` made of that (given to it as ``ctx.inset``).

    Nothing is stored here, so a batch that fails half-way (out of memory) leaves no partial columns.
    """
    ctx = _context(spec, fam, batch)
    if inset is not None:
        cols = {name: m.per_image_oos(replace(ctx, inset=inset.get(name, {}))) for name, m in measures.items()}
        return cols, {}
    cols = {name: m.per_image(ctx) for name, m in measures.items()}
    cols[CHECKS] = _check_columns(fam, ctx)
    states = {name: st for name, m in measures.items() if (st := m.inset_state(ctx)) is not None}
    return cols, states


def _check_columns(fam: Family, ctx: BatchContext) -> Columns:
    """Per image and run ([N, K]), what the report's metadata warnings are computed from (etm.models.checks):
    the normalised inputs and the raw outputs of the clean pass. Columns like the measures' so shards merge."""
    per_run: dict[str, list[np.ndarray]] = {}
    for r, (model, res) in enumerate(zip(fam.models, ctx.clean, strict=True)):
        got = checks.input_columns(model.preprocess(ctx.images)) | checks.output_columns(
            res.logits, ctx.probabilities_fn(r, res.logits), res.predicted
        )
        for k, v in got.items():
            per_run.setdefault(k, []).append(v)
    return {k: np.stack(v, axis=1) for k, v in per_run.items()}


def run_warnings(
    families: list[Family], columns: dict[str, dict[str, Columns]], results: dict[str, dict[str, list[Any]]]
) -> list[dict[str, Any]]:
    """The report's warnings: each run's load warnings, then those from the job's numbers (etm.models.checks)."""
    out: list[dict[str, Any]] = []
    for fam in families:
        acc = {r.name: r for r in results.get(fam.name, {}).get("accuracy", [])}
        bal, auc = acc.get("accuracy.balanced"), acc.get("accuracy.auroc")
        for run, model in enumerate(fam.models):
            pair = None
            if bal is not None and auc is not None and bal.per_run and auc.per_run:
                pair = (bal.per_run[run]["value"], auc.per_run[run]["value"])
            n = bal.n if bal is not None else 0
            where = {"candidate": fam.name, "run": run, "model": fam.refs[run] if run < len(fam.refs) else ""}
            diag = columns[fam.name].get(CHECKS, {})
            for source, ws in (
                ("load", model.load_warnings()),
                ("job", checks.job_warnings(model.metadata, model.num_outputs, diag, run, pair, n)),
            ):
                out += [{**where, "source": source, **w} for w in ws]
    return out


def _fitting(
    score: Callable[[Batch], Any], batch: Batch, fits: dict[str, int], fam: Family, stage: str
) -> list[Any]:
    """``score`` over the batch in parts of at most ``fits[fam.name]`` images, halving that size whenever a part
    runs out of memory (and keeping it halved for the rest of the pass), down to one image."""
    out: list[Any] = []
    start = 0
    while start < len(batch):
        size = min(fits.get(fam.name, len(batch)), len(batch) - start)
        part = batch if size == len(batch) else batch.subset(start, start + size)
        try:
            out.append(score(part))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            release_memory()  # also torch.cuda.empty_cache, so the retry finds the freed blocks
            if size == 1:
                raise ModelOutOfMemory(
                    f"candidate {fam.name!r} ran out of memory during {stage} on image {part.keys[0]!r} even with a "
                    f"batch of 1 image (the batch was halved from {len(batch)} down to 1): {str(exc).strip()[:300]}. "
                    "Use a worker with more memory (ETM_JOB_QUEUE=gpu for a larger GPU, or raise "
                    "ETM_ORT_ARENA_MAX_BYTES), a smaller input_size, or another salience method",
                    smallest=1,
                ) from exc
            fits[fam.name] = size // 2
            log.warning(
                "candidate %s: out of memory on a batch of %d images during %s; retrying with %d (%s)",
                fam.name, size, stage, size // 2, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "",
            )
            continue
        start += size
    return out


def _append(store: dict[str, list[np.ndarray]], cols: Columns) -> None:
    for k, v in cols.items():
        store.setdefault(k, []).append(np.asarray(v))


def _concat(store: dict[str, list[np.ndarray]]) -> Columns:
    return {k: np.concatenate(v) for k, v in store.items()}


def _add(total: Columns, state: Columns) -> None:
    """``total += state`` per key (integer arrays: the sum does not depend on the order of the batches)."""
    for k, v in state.items():
        arr = np.asarray(v)
        if arr.dtype.kind not in "iub":
            raise TypeError(f"in-set state {k!r} must be an integer array to be summed exactly, got {arr.dtype}")
        arr = arr.astype(np.int64)
        total[k] = arr if k not in total else total[k] + arr


def _pass(
    spec: EvaluationSpec,
    dataset: Dataset,
    indices: range,
    families: list[Family],
    measures: dict[str, dict[str, Measure]],
    stage: str,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    oos_state: dict[str, dict[str, dict[str, Any]]] | None,
) -> tuple[dict[str, dict[str, Columns]], dict[str, dict[str, Columns]], float]:
    """One streaming pass over ``indices``; returns columns, the measures' summed in-set state (in-set pass
    only; see ``Measure.inset_state``) and seconds. ``oos_state``: candidate -> measure -> ``ctx.inset``."""
    t0 = time.perf_counter()
    store: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {f.name: {} for f in families}
    sums: dict[str, dict[str, Columns]] = {f.name: {} for f in families}
    total, done = len(indices) * len(families), 0
    by_size: dict[tuple[int, int], list[Family]] = {}
    for fam in families:
        by_size.setdefault(fam.input_size, []).append(fam)
    fits: dict[str, int] = {}  # per family: the largest batch that fitted in memory, once one did not
    for size, fams in by_size.items():
        for batch in iter_batches(dataset, indices, spec.batch_size, size):
            for fam in fams:
                if should_cancel and should_cancel():
                    raise Canceled(f"canceled during {stage}")
                inset = oos_state[fam.name] if oos_state is not None else None

                def score(part: Batch, fam: Family = fam, inset: dict[str, dict[str, Any]] | None = inset) -> Any:
                    return _score_batch(spec, fam, part, measures[fam.name], inset)

                for part_cols, part_states in _fitting(score, batch, fits, fam, stage):
                    for name, cols in part_cols.items():
                        if cols:
                            _append(store[fam.name].setdefault(name, {}), cols)
                    for name, state in part_states.items():
                        _add(sums[fam.name].setdefault(name, {}), state)
                done += len(batch.keys)
                if progress:
                    progress(stage, done, total)
    cols = {fam: {m: _concat(s) for m, s in fams.items()} for fam, fams in store.items()}
    return cols, {fam: s for fam, s in sums.items() if s}, time.perf_counter() - t0


def run_inset(
    spec: EvaluationSpec,
    resolver: Resolver | None = None,
    shard: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Partial:
    """The in-set pass over one shard of the images (all of them when ``shard`` is None)."""
    resolver = resolver or Resolver()
    t0 = time.perf_counter()
    dataset = _dataset(spec, resolver)
    families = load_families(spec, resolver)
    t_load = time.perf_counter() - t0
    indices = shard_indices(len(dataset), spec.batch_size, shard)
    measures = {f.name: make_measures(spec, f) for f in families}
    cols, sums, secs = _pass(spec, dataset, indices, families, measures, "in-set", progress, should_cancel, None)
    return Partial(
        shard=shard or (0, 1),
        n_images=len(indices),
        columns=cols,
        inset=sums,
        keys=[dataset.items[i].key for i in indices],
        seconds={"load": t_load, "in-set": secs},
    )


def _dataset(spec: EvaluationSpec, resolver: Resolver) -> Dataset:
    ds = resolver.dataset(spec.dataset, spec.split)
    if spec.max_images is not None and spec.max_images < len(ds.items):
        # Evenly spaced over the canonical (sorted) order, so a subset keeps the class balance.
        step = len(ds.items) / spec.max_images
        items = [ds.items[int(i * step)] for i in range(spec.max_images)]
        counts = dict(sorted(Counter(it.label for it in items).items()))
        ds = replace(ds, items=items, sha256=content_sha256(items), counts=counts)
    return ds


def finish(
    spec: EvaluationSpec,
    partials: Sequence[Partial],
    resolver: Resolver | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> EvaluationResult:
    """Merge shard results (in shard order), run the out-of-set pass, summarise, build the report."""
    resolver = resolver or Resolver()
    t0 = time.perf_counter()
    parts = sorted(partials, key=lambda p: p.shard[0])
    expected = parts[0].shard[1] if parts else 0
    if [p.shard for p in parts] != [(i, expected) for i in range(expected)]:
        raise BadInput(f"shards to merge are incomplete or mixed: {[p.shard for p in parts]}")
    dataset = _dataset(spec, resolver)
    keys = [k for p in parts for k in p.keys]
    if keys != [it.key for it in dataset.items]:
        raise BadInput("the shards do not cover the dataset's images in order; were they computed on this dataset?")
    families = load_families(spec, resolver)
    columns: dict[str, dict[str, Columns]] = {}
    for fam in families:
        # A shard with no images (more shards than batches) contributes no columns.
        fams = [cols for p in parts if (cols := p.columns.get(fam.name)) and any(cols.values())] or [{}]
        columns[fam.name] = {
            m: {c: np.concatenate([f[m][c] for f in fams if m in f]) for c in fams[0][m]} for m in fams[0]
        }
    oos_cols: dict[str, dict[str, Columns]] | None = None
    oos_ds = None
    seconds = {k: sum(p.seconds.get(k, 0.0) for p in parts) for k in ("load", "in-set")}
    oos_measures = {f.name: {n: m for n, m in make_measures(spec, f).items() if m.needs_oos} for f in families}
    if spec.ood_dataset is not None:
        oos_ds = resolver.dataset(spec.ood_dataset, spec.ood_split)
    if oos_ds is not None and any(oos_measures.values()):
        state: dict[str, dict[str, dict[str, Any]]] = {}
        for fam in families:
            state[fam.name] = {}
            for name, m in oos_measures[fam.name].items():
                total: Columns = {}
                for p in parts:  # a shard with no images carries no state
                    _add(total, p.inset.get(fam.name, {}).get(name, {}))
                state[fam.name][name] = m.finish_inset(total)
        oos_cols, _, secs = _pass(
            spec, oos_ds, range(len(oos_ds)), families, oos_measures, "out-of-set", progress, should_cancel, state
        )
        seconds["out-of-set"] = secs
    t1 = time.perf_counter()
    results = {}
    for fam in families:
        ms = make_measures(spec, fam)
        results[fam.name] = {
            name: m.summarize(
                columns[fam.name].get(name, {}),
                (oos_cols or {}).get(fam.name, {}).get(name) if oos_cols is not None else None,
                spec.seed,
            )
            for name, m in ms.items()
        }
    for fam_results in results.values():  # the paper profile reports the paper's variants only
        for name, rs in fam_results.items():
            keep = set(spec.reported_variants([r.name for r in rs]))
            fam_results[name] = [r for r in rs if r.name in keep]
    seconds["summarize"] = time.perf_counter() - t1
    seconds["total"] = seconds["load"] + seconds["in-set"] + seconds.get("out-of-set", 0.0) + (time.perf_counter() - t0)
    return build_report(
        spec,
        dataset,
        oos_ds,
        families,
        results,
        columns,
        seconds,
        measures={f.name: make_measures(spec, f) for f in families},
        warnings=run_warnings(families, columns, results),
    )


def evaluate(
    spec: EvaluationSpec,
    resolver: Resolver | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> EvaluationResult:
    """Score every candidate of ``spec``; returns the report (see ``etm.report``)."""
    resolver = resolver or Resolver()
    part = run_inset(spec, resolver, None, progress, should_cancel)
    return finish(spec, [part], resolver, progress, should_cancel)
