"""Fingerprints of two reference reports, for refactors that must not change a single byte.

1. The benchmark job: `xent` vs `cyborg` (three committed runs each) on 48 test faces of the
   reference benchmark, every measure, the unseen generators as the out-of-set data, scored locally
   (the domain library, as ``etm score`` does).
2. The sharded job: the same job through the real service (own Redis, API, two Celery workers),
   split into three shards.

Prints a SHA-256 of each report (``provenance.timing`` removed: the only wall-clock block), of its
per-image CSV, and of its salience pictures. Run before and after a change and compare:

    python -m tests.report_hashes            # ~4 minutes on two cores
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchdata import paths
from tests.servicekit import ServiceKit

N_IMAGES = 48
RUNS = 3


def subset(dest: Path, n: int = N_IMAGES, src: Path = paths.FACES_DIR, split: str = "test") -> Path:
    """The first ``n`` images of a split (canonical manifest order, classes alternating), with masks."""
    if (src / "manifest.csv").exists():
        with (src / "manifest.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == split]
    else:  # class folders
        rows = [{"label": p.parent.name, "path": p.relative_to(src).as_posix()} for p in sorted(src.glob("*/*.png"))
                if p.parent.name != "masks"]
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    picked = [r for pair in zip(*by_label.values(), strict=False) for r in pair][:n]
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for r in picked:
        out = dest / r["label"] / Path(r["path"]).name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / r["path"], out)
        mask = src / "masks" / Path(r["path"]).name
        if mask.exists():
            shutil.copyfile(mask, dest / "masks" / mask.name)
    return dest


def digest(report: dict[str, Any]) -> str:
    r = json.loads(json.dumps(report))
    r["provenance"].pop("timing", None)
    return hashlib.sha256(json.dumps(r, indent=2).encode()).hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(models: dict[str, list[str]], dataset: str, ood: str) -> dict[str, Any]:
    return {
        "candidates": [{"name": name, "models": ids} for name, ids in models.items()],
        "dataset": dataset,
        "ood_dataset": ood,
        "batch_size": 16,
        "bootstrap_resamples": 200,
        "overlays": 2,
        "seed": 7,
    }


def local_job(work: Path, faces: Path, unseen: Path) -> dict[str, str]:
    from etm.evaluation import Resolver, evaluate  # noqa: PLC0415 - the domain package may be renamed
    from etm.spec import EvaluationSpec  # noqa: PLC0415

    # Paths relative to the work folder, so that the report (which names the files) is the same
    # wherever the repository and the temporary folder lie.
    files: dict[str, list[str]] = {}
    for recipe in paths.RECIPES:
        files[recipe] = []
        for p in paths.family_files(recipe)[:RUNS]:
            rel = Path("models") / recipe / p.name
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, work / rel)
            shutil.copyfile(p.with_name(p.name + ".json"), work / rel.with_name(p.name + ".json"))
            files[recipe].append(rel.as_posix())
    s = EvaluationSpec.model_validate(spec(files, faces.name, unseen.name))
    out = evaluate(s, Resolver(model_path=lambda i: work / i, dataset_path=lambda i: work / i, threads=1))
    out.write(work / "local")
    return {
        "report": digest(out.report),
        "per_image.csv": sha((work / "local" / "per_image.csv").read_bytes()),
    }


def service_job(work: Path, faces: Path, unseen: Path) -> dict[str, str]:
    with ServiceKit(work / "kit", n_workers=2, env={"ETM_SHARD_IMAGES": "16"}) as kit:
        ids: dict[str, list[str]] = {}
        for recipe in paths.RECIPES:
            ids[recipe] = []
            for p in paths.family_files(recipe)[:RUNS]:
                r = kit.upload_model(p, metadata=p.with_name(p.name + ".json").read_text())
                r.raise_for_status()
                ids[recipe].append(r.json()["id"])
        ds = kit.upload_dataset(faces, "faces.zip")
        ood = kit.upload_dataset(unseen, "unseen.zip")
        ds.raise_for_status()
        ood.raise_for_status()
        r = kit.submit(spec(ids, ds.json()["id"], ood.json()["id"]))
        r.raise_for_status()
        job = kit.wait(r.json()["id"], timeout=900)
        if job["status"] != "succeeded":
            raise SystemExit(f"the sharded job failed: {job['error']}")
        if job["shards"] != 3:
            raise SystemExit(f"expected 3 shards, the job ran {job['shards']}")
        report = kit.client.get(job["links"]["report"]).json()
        csv_bytes = kit.client.get(job["links"]["report_csv"]).content
        pictures = kit.client.get(job["links"]["artifacts"]).json()["items"]
        pngs = hashlib.sha256()
        for item in sorted(pictures, key=lambda a: a["name"]):
            pngs.update(item["name"].encode())
            pngs.update(kit.client.get(item["url"]).content)
        return {"report": digest(report), "report.csv": sha(csv_bytes), "artifacts": pngs.hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-service", action="store_true", help="only the local benchmark job")
    args = ap.parse_args(argv)
    if not (paths.FACES_DIR / "manifest.csv").exists():
        subprocess.run([sys.executable, "-m", "benchdata.generate"], check=True)
    with tempfile.TemporaryDirectory(prefix="etm-hashes-") as tmp:
        work = Path(tmp)
        faces = subset(work / "faces")
        unseen = subset(work / "unseen", n=16, src=paths.UNSEEN_DIR)
        result = {"benchmark job (local)": local_job(work, faces, unseen)}
        if not args.skip_service:
            result["sharded job (service, 3 shards)"] = service_job(work, faces, unseen)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
