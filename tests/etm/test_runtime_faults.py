"""Runtime faults (issue #5, point 3): NaN/Inf outputs, out of memory (batches halved, then a clear
failure) and time limits end a job as ``failed`` with a problem object, and the same worker then runs
the next job. In the domain first (messages, halving keeps the numbers), then through the real
service: one kit (own Redis, uvicorn, one Celery worker) whose worker has a 6 s soft time limit and a
24 MiB ONNX Runtime arena, so that memory-hungry graphs genuinely fail to allocate on this CPU.
The HTTP statuses of the upload refusals of point 2 are checked on the same kit."""

from __future__ import annotations

import io
import json
import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from etm.errors import ModelRuntimeError
from etm.evaluation import Resolver, evaluate
from etm.settings import get_settings
from etm.spec import EvaluationSpec
from tests.helpers.faulty import conv_net, custom_domain, newer_opset_than_runtime, wrong_shape
from tests.helpers.tiny import META
from tests.servicekit import ServiceKit, zip_folder

ARENA = 24 * 2**20  # 1024 channels at 32x32 are 4 MiB per image: a batch of 8 fails, 2 fit; 8192 never fits


def _spec(models: list[Path] | list[str], dataset: str, **over: Any) -> EvaluationSpec:
    body = {
        "candidates": [{"name": "cand", "models": [str(m) for m in models]}],
        "dataset": str(dataset),
        "measures": ["entropy"],
        "batch_size": 8,
        "bootstrap_resamples": 100,
        **over,
    }
    return EvaluationSpec.model_validate(body)


# -- in the domain -------------------------------------------------------------------------------


def test_nan_output_names_the_model_the_images_and_what_to_check(tmp_path: Path, dataset_dir: Path) -> None:
    nan = conv_net(tmp_path / "nan.onnx", nan_input=True)
    with pytest.raises(ModelRuntimeError) as err:
        evaluate(_spec([nan], str(dataset_dir)))
    assert str(err.value) == (
        f"candidate 'cand', model {nan} (run 0): the model output contains NaN or Inf for 8 of 8 images; images: "
        "real/real_000.png, real/real_001.png, real/real_002.png, real/real_003.png, real/real_004.png and 3 more. "
        "run the model on these images outside the service to reproduce it, and check its metadata (mean, std, "
        "channel_order, input_size): inputs scaled unlike in training can overflow"
    )


@pytest.fixture
def capped_arena(monkeypatch: pytest.MonkeyPatch) -> Any:
    """This process's ONNX sessions allocate from one arena of ARENA bytes (created after this point)."""
    monkeypatch.setenv("ETM_ORT_ARENA_MAX_BYTES", str(ARENA))
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("ETM_ORT_ARENA_MAX_BYTES")
    get_settings.cache_clear()


def test_out_of_memory_halves_the_batch_and_keeps_the_numbers(
    tmp_path: Path, dataset_dir: Path, capped_arena: None, caplog: pytest.LogCaptureFixture
) -> None:
    hungry = conv_net(tmp_path / "hungry.onnx", wide=1024)
    # Per-image randomness (noise) and transformed passes (geometry) must not depend on the batch either.
    spec = _spec([hungry], str(dataset_dir), measures=["entropy", "noise", "geometry"])
    get_settings.cache_clear()
    with pytest.MonkeyPatch.context() as mp:  # the reference run: uncapped sessions, whole batches of 8
        mp.setenv("ETM_ORT_ARENA_MAX_BYTES", "0")
        reference = evaluate(spec, Resolver())
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING, logger="etm.evaluation"):
        halved = evaluate(spec, Resolver())
    retries = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert retries and retries[0].startswith("candidate cand: out of memory on a batch of 8 images during in-set; "
                                              "retrying with 4")
    assert reference.keys == halved.keys
    for fam, cols in reference.columns["cand"].items():
        for name, arr in cols.items():
            np.testing.assert_allclose(halved.columns["cand"][fam][name], arr, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{fam}.{name}")


def test_out_of_memory_even_for_one_image_fails_clearly(
    tmp_path: Path, dataset_dir: Path, capped_arena: None
) -> None:
    huge = conv_net(tmp_path / "huge.onnx", wide=8192)  # 32 MiB per image
    with pytest.raises(ModelRuntimeError) as err:
        evaluate(_spec([huge], str(dataset_dir)), Resolver())
    assert type(err.value).__name__ == "ModelOutOfMemory" and err.value.smallest == 1  # type: ignore[attr-defined]
    assert str(err.value).startswith(
        "candidate 'cand' ran out of memory during in-set on image 'real/real_000.png' even with a batch of 1 image "
        "(the batch was halved from 8 down to 1): "
    )


# -- through the service -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {
        "ETM_TASK_SOFT_TIME_LIMIT": "30",  # each job starts a sandboxed model process (seconds on a busy machine)
        "ETM_TASK_TIME_LIMIT": "60",
        "ETM_ORT_ARENA_MAX_BYTES": str(ARENA),
        "ETM_AUTH": "off",
    }
    with ServiceKit(tmp_path_factory.mktemp("faults"), n_workers=1, env=env) as k:
        yield k


@pytest.fixture(scope="module")
def ids(kit: ServiceKit, tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fault_models")
    models = {
        "good": conv_net(d / "good.onnx"),
        "nan": conv_net(d / "nan.onnx", nan_input=True),
        "hungry": conv_net(d / "hungry.onnx", wide=1024),
        "huge": conv_net(d / "huge.onnx", wide=8192),
        "slow": conv_net(d / "slow.onnx", channels=32, repeats=2000),  # minutes per job, a second per probe
    }
    out = {}
    for name, path in models.items():
        r = kit.upload_model(path, json.dumps(META))
        assert r.status_code == 201, r.text
        out[name] = r.json()["id"]
    r = kit.upload_dataset(dataset_dir)
    assert r.status_code in (200, 201), r.text  # 200: the skipped-files test registered the same images first
    out["dataset"] = r.json()["id"]
    return out


def _run(kit: ServiceKit, ids: dict[str, str], model: str, seed: int, **over: Any) -> dict[str, Any]:
    body = _spec([ids[model]], ids["dataset"], seed=seed, overlays=0, **over).model_dump(mode="json")
    r = kit.submit(body)
    assert r.status_code == 202, r.text
    return kit.wait(r.json()["id"], timeout=180)


def _healthy_next(kit: ServiceKit, ids: dict[str, str], seed: int) -> None:
    job = _run(kit, ids, "good", seed)
    assert job["status"] == "succeeded", job
    assert kit.procs["worker0"].poll() is None


def test_upload_refusals_answer_with_status_and_message(kit: ServiceKit, tmp_path: Path) -> None:
    base = conv_net(tmp_path / "base.onnx")
    for make, start in (
        (newer_opset_than_runtime, "new.onnx needs opset "),
        (custom_domain, "new.onnx imports operator domain 'com.example.custom' (version 1), which onnxruntime "),
        (wrong_shape, "new.onnx fails on a probe batch of 2 blank 32x32 images: the model output has shape [1, 4]"),
    ):
        r = kit.upload_model(make(base, tmp_path / "new.onnx"), json.dumps(META))
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["detail"].startswith(start), r.json()

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("real/bomb.png", b"\0" * (8 << 20))
    r = kit.client.post("/v1/datasets", files={"file": ("bomb.zip", bomb.getvalue(), "application/zip")})
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert r.json()["detail"].startswith("archive member 'real/bomb.png' inflates from "), r.json()
    assert "(ETM_MAX_COMPRESSION_RATIO)" in r.json()["detail"]


def test_dataset_upload_lists_what_it_skipped(kit: ServiceKit, tmp_path: Path, dataset_dir: Path) -> None:
    folder = tmp_path / "ds"
    for p in dataset_dir.rglob("*.png"):
        target = folder / p.relative_to(dataset_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    (folder / "README.txt").write_text("how the images were made")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.new("RGB", (4, 4)).save(folder / "real" / "zz_bomb.png")
    raw = (folder / "real" / "zz_bomb.png").read_bytes()  # claim 30000x30000 in the header (CRC fixed below)
    ihdr = (30_000).to_bytes(4, "big") * 2 + raw[24:29]
    raw = raw[:16] + ihdr + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big") + raw[33:]
    (folder / "real" / "zz_bomb.png").write_bytes(raw)
    r = kit.client.post("/v1/datasets", files={"file": ("ds.zip", zip_folder(folder), "application/zip")})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert {s["path"]: s["reason"] for s in rec["archive"]["skipped"]} == {
        "README.txt": "not an image (.txt); only manifest.csv and images are extracted",
        ".DS_Store": "hidden file or folder (.DS_Store), e.g. .DS_Store; not part of a dataset",
    }
    assert {"path": "real/zz_bomb.png", "reason": "image too large: 900000000 pixels, above the limit of 100000000 "
            "(ETM_MAX_IMAGE_PIXELS); refused unread as a possible decompression bomb"} in rec["skipped"]
    assert rec["n_images"] == 24


def test_nan_output_fails_the_job_and_the_worker_runs_the_next(kit: ServiceKit, ids: dict[str, str]) -> None:
    job = _run(kit, ids, "nan", seed=1)
    assert job["status"] == "failed", job
    err = job["error"]
    assert err["type"].endswith("/model-runtime-error") and err["status"] == 422, err
    assert err["detail"].startswith(
        f"candidate 'cand', model {ids['nan']} (run 0): the model output contains NaN or Inf for 8 of 8 images; "
        "images: real/real_000.png, "
    ), err
    _healthy_next(kit, ids, seed=2)


def test_out_of_memory_is_halved_or_fails_clearly_and_the_worker_runs_the_next(
    kit: ServiceKit, ids: dict[str, str]
) -> None:
    # The model that never fits runs before the one that fits once halved: with one capped arena shared by
    # the process, ONNX Runtime 1.32 stopped enforcing the cap for later sessions after the first session it
    # created recovered from an allocation failure (seen with plain sessions, outside our code), so the
    # other order is at the mercy of which session a worker made first.
    job = _run(kit, ids, "huge", seed=4)
    assert job["status"] == "failed", job
    err = job["error"]
    assert err["type"].endswith("/out-of-memory") and err["status"] == 507, err
    assert err["detail"].startswith(
        "candidate 'cand' ran out of memory during in-set on image 'real/real_000.png' even with a batch of 1 image "
        "(the batch was halved from 8 down to 1): "
    ), err

    job = _run(kit, ids, "hungry", seed=3)
    assert job["status"] == "succeeded", job
    assert "out of memory on a batch of 8 images during in-set; retrying with 4" in kit.log_tail("worker0", 100_000)
    _healthy_next(kit, ids, seed=5)


def test_time_limit_fails_the_job_and_the_worker_runs_the_next(kit: ServiceKit, ids: dict[str, str]) -> None:
    job = _run(kit, ids, "slow", seed=6, measures=["entropy", "geometry"])  # minutes of work without the limit
    assert job["status"] == "failed", job
    err = job["error"]
    assert err["type"].endswith("/time-limit") and err["status"] == 504, err
    assert err["detail"].startswith("the job ran past the task time limit (30 s, ETM_TASK_SOFT_TIME_LIMIT; killed at "
                                    "60 s, ETM_TASK_TIME_LIMIT)"), err
    _healthy_next(kit, ids, seed=7)
