"""The client and the ``etm`` remote commands against the real service (redis-server, API under uvicorn, a
Celery worker; tests/servicekit.py), with the tiny models and datasets: uploads, submit-wait-report, the
comparison, CI gates (pass, fail, bad usage), the HTML report route, the leaderboard and MLflow logging."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from client import ApiError, AsyncClient, Client, Job
from client.cli import main as etm
from tests.servicekit import PY, REPO, ServiceKit

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = ServiceKit(tmp_path_factory.mktemp("kit"), n_workers=1)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def client(kit: ServiceKit) -> Any:
    with Client(kit.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def ids(client: Client, family_onnx: list[Path], dataset_dir: Path, ood_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = [client.push_model(p, p.with_name(p.name + ".json")) for p in family_onnx]
    assert all(m.created for m in models)
    ds = client.push_dataset(dataset_dir)  # a folder: zipped while it streams
    tar = tmp_path_factory.mktemp("tar") / "ood.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(ood_dir, arcname="ood")
    ood = client.push_dataset(tar)  # an archive: sent as it is
    return {"models": [m.id for m in models], "dataset": ds.id, "ood": ood.id, "paths": family_onnx}


OPTIONS = {"bootstrap_resamples": 100, "batch_size": 8, "max_images": 16, "overlays": 3}


@pytest.fixture(scope="module")
def done(client: Client, ids: dict[str, Any]) -> dict[str, Any]:
    """One job with every measure (and an out-of-set dataset), followed with a progress callback."""
    m = ids["models"]
    seen: list[Job] = []
    job, report = client.evaluate({"a": m[:2], "b": m[1:]}, ids["dataset"], ood_dataset=ids["ood"],
                                  measures=["all"], on_progress=seen.append, timeout=180, **OPTIONS)
    return {"job": job, "report": report, "seen": seen}


def run_etm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = etm(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_uploads_are_content_addressed(client: Client, ids: dict[str, Any], family_onnx: list[Path],
                                       dataset_dir: Path, tmp_path: Path) -> None:
    again = client.push_model(family_onnx[0])
    assert again.id == ids["models"][0] and not again.created and again.supports("gradcam")
    assert again.metadata["class_names"] == ["real", "synthetic"]
    # The streamed zip of the folder and a zip made another way are the same dataset (content hash).
    archive = tmp_path / "tiny.zip"
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(dataset_dir.rglob("*"), reverse=True):
            if p.is_file():
                zf.write(p, "wrapper/" + p.relative_to(dataset_dir).as_posix())
    same = client.push_dataset(archive)
    assert same.id == ids["dataset"] and not same.created
    assert same.n_images == 24 and same.counts == {"real": 12, "synthetic": 12}
    assert client.dataset(ids["ood"]).n_images == 12


def test_submit_wait_report_with_progress(client: Client, done: dict[str, Any]) -> None:
    job, report, seen = done["job"], done["report"], done["seen"]
    assert job.succeeded and job.progress.fraction == 1.0 and not job.cache_hit
    fractions = [j.progress.fraction for j in seen]
    assert fractions == sorted(fractions) and seen[-1].status == "succeeded" and len(seen) >= 2
    assert report.candidates == ["a", "b"] and report.schema_version.startswith("1.")
    cmp_ = client.compare(job.id)
    assert cmp_.candidates == ["a", "b"] and "stability.ssim" in cmp_.measures
    st = cmp_.measures["stability.ssim"]
    assert {e.candidate for e in st.ranking} == {"a", "b"} and st.best
    d = st.difference("b", "a")
    assert d is not None and d.mean_diff == pytest.approx(-st.difference("a", "b").mean_diff)
    assert report.value("a", "entropy.spatial") == report.measure("a", "entropy.spatial")["value"]
    names = {a.name for a in client.artifacts(job.id)}
    assert {"overlays.json", "curves.json", "overlay_a_00.png", "overlay_b_02.png"} <= names
    assert client.artifact(job.id, "overlay_a_00.png")[:4] == b"\x89PNG"
    assert client.report_csv(job.id).startswith("candidate,run,key")


def test_not_finished_and_unknown_jobs_raise_problems(client: Client, ids: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as exc:
        client.report("j-00000000000000000000")
    assert exc.value.status == 404 and exc.value.title == "Not found" and "GET /v1/jobs" in exc.value.detail
    with pytest.raises(ApiError) as exc:
        client.submit_job({"a": ["m-0000000000000000"]}, ids["dataset"])
    assert exc.value.status == 422 and "m-0000000000000000" in exc.value.detail


def test_cli_habits_version_global_options_and_not_finished(capsys: pytest.CaptureFixture[str], kit: ServiceKit,
                                                            ids: dict[str, Any]) -> None:
    """`etm --version`; service options before the subcommand; a job not finished yet exits 75 (not 2, bad input)
    with a hint that names the etm command; the progress lines say the elapsed time."""
    v = subprocess.run([PY, "-m", "client.cli", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and re.match(r"etm \S+ \(explain-to-me", v.stdout), v.stdout + v.stderr
    code, out, err = run_etm(capsys, "--url", kit.base_url, "--json", "jobs", "list", "--limit", "1")
    assert code == 0 and isinstance(json.loads(out), list), err
    m = ids["models"]
    submitted = []
    for seed in (7, 8):  # one worker: the second waits behind the first
        code, out, err = run_etm(capsys, "--url", kit.base_url, "jobs", "submit", "--candidate", f"a={m[0]}",
                                 "--dataset", ids["dataset"], "--measures", "noise", "--seed", str(seed),
                                 "--max-images", "16", "--bootstrap", "100")
        assert code == 0, err
        submitted.append(out.strip())
    try:
        code, out, err = run_etm(capsys, "compare", submitted[1], "--url", kit.base_url)
        assert code == 75, (code, err)
        assert f"etm jobs wait {submitted[1]}" in err and "/v1/" not in err, err
        code, _, err = run_etm(capsys, "jobs", "wait", submitted[0], "--url", kit.base_url, "--timeout", "120")
        assert code == 0 and "elapsed" in err, err
    finally:
        for job in submitted:
            run_etm(capsys, "jobs", "cancel", job, "--url", kit.base_url)
    code, _, err = run_etm(capsys, "jobs", "status", "j-00000000000000000000", "--url", kit.base_url)
    assert code == 2 and "`etm jobs list`" in err, err


def test_async_client_same_answers(kit: ServiceKit, ids: dict[str, Any], done: dict[str, Any]) -> None:
    m = ids["models"]

    async def run() -> tuple[Any, Any]:
        async with AsyncClient(kit.base_url) as c:
            # The same spec again: a cache hit, already succeeded.
            job = await c.submit_job({"a": m[:2], "b": m[1:]}, ids["dataset"], ood_dataset=ids["ood"],
                                     measures=["all"], **OPTIONS)
            job = await c.wait(job.id)
            return job, await c.report(job.id)

    job, report = asyncio.run(run())
    assert job.cache_hit and job.id != done["job"].id
    assert report.raw["comparison"] == done["report"].raw["comparison"]


def test_report_html_route(client: Client, kit: ServiceKit, done: dict[str, Any]) -> None:
    job_id = done["job"].id
    r = kit.client.get(f"/v1/jobs/{job_id}/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = client.report_html(job_id)
    assert page == r.text and job_id in page
    for section in ('id="ranking"', 'id="measures"', 'id="overlays"', 'id="curves"', 'id="stability"',
                    'id="provenance"'):
        assert section in page, section
    assert page.count('src="data:image/png;base64,') == 2 * 3  # 3 overlays per candidate, inline
    assert not re.search(r'(src|href)="(?!data:|#)', page), "the page must reference nothing outside itself"
    bad = kit.client.get("/v1/jobs/j-00000000000000000000/report.html")
    assert bad.status_code == 404 and bad.headers["content-type"].startswith("application/problem+json")


def test_cli_push_submit_wait_and_compare(capsys: pytest.CaptureFixture[str], kit: ServiceKit,
                                          ids: dict[str, Any], dataset_dir: Path) -> None:
    url = ["--url", kit.base_url]
    code, out, err = run_etm(capsys, "models", "push", str(ids["paths"][2]), *url)
    assert code == 0 and out.strip() == ids["models"][2] and "already registered" in err and "sidecar" in err
    code, out, err = run_etm(capsys, "datasets", "push", str(dataset_dir), *url)
    assert code == 0 and out.strip() == ids["dataset"]
    m = ids["models"]
    # A new configuration (seed 1), so that the worker computes and the progress moves.
    code, out, err = run_etm(capsys, "jobs", "submit", "--candidate", f"a={m[0]},{m[1]}", "--candidate",
                             f"b={m[1]},{m[2]}", "--dataset", ids["dataset"], "--measures", "entropy", "stability",
                             "--seed", "1", "--max-images", "16", "--bootstrap", "100", "--overlays", "2",
                             "--wait", "--timeout", "120", *url)
    assert code == 0, err
    job_id = out.strip()
    assert re.fullmatch(r"j-[0-9a-f]{20}", job_id) and f"job {job_id} succeeded" in err
    assert f"{job_id}: running" in err or f"{job_id}: succeeded" in err  # progress lines (not a TTY)
    code, out, err = run_etm(capsys, "compare", job_id, *url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MEASURE", "BETTER", "a", "b"]
    assert any(line.startswith("stability.ssim") and "#1" in line for line in lines)
    assert "Pareto set:" in out
    code, out, _ = run_etm(capsys, "jobs", "status", job_id, *url)
    assert code == 0 and "succeeded" in out and "done 1/1 (100%)" in out
    code, out, _ = run_etm(capsys, "jobs", "report", job_id, "--format", "json", *url)
    assert code == 0 and json.loads(out)["config"]["seed"] == 1


def test_cli_gate_pass_and_fail(capsys: pytest.CaptureFixture[str], kit: ServiceKit, done: dict[str, Any]) -> None:
    url = ["--url", kit.base_url]
    job_id, report = done["job"].id, done["report"]
    ssim = {c: report.value(c, "stability.ssim") for c in ("a", "b")}
    ent = {c: report.value(c, "entropy.spatial") for c in ("a", "b")}
    low, high = min(ssim.values()) - 0.05, max(ent.values()) + 0.05
    code, out, err = run_etm(capsys, "gate", job_id, "--require", f"stability.ssim>={low:.4f}",
                             "--require", f"entropy.spatial<={high:.4f}", *url)
    assert code == 0, err
    assert out.count("pass") == 4 and "FAIL" not in out and "gate passed: 4 of 4" in err

    need = ssim["b"] + 0.25
    code, out, err = run_etm(capsys, "gate", job_id, "--require", f"stability.ssim>={need:.4f}",
                             "--candidate", "b", *url)
    assert code == 1
    assert "FAIL" in out and "requirement failed: b: stability.ssim" in err
    short = float(re.search(r"short by ([0-9.e-]+)", err).group(1))
    assert short == pytest.approx(need - ssim["b"], abs=2e-4)
    assert "gate FAILED: 0 of 1" in err

    code, out, err = run_etm(capsys, "gate", job_id, "--require", f"stability.ssim>={need:.4f}", "--json", *url)
    assert code == 1
    res = json.loads(out)
    assert res["passed"] is False and res["n_checks"] == 2 and res["checks"][0]["measure"] == "stability.ssim"

    for argv, text in (
        (["--require", "stability.ssim=>0.5"], "cannot read requirement"),
        (["--require", "stability.nope>=0.5"], "no measure 'stability.nope'"),
        (["--require", "stability.ssim>=0.5", "--candidate", "ghost"], "unknown candidate"),
        ([], "at least one requirement"),
    ):
        code, _, err = run_etm(capsys, "gate", job_id, *argv, *url)
        assert code == 2 and text in err, (argv, err)
    code, _, err = run_etm(capsys, "gate", "j-00000000000000000000", "--require", "stability.ssim>=0", *url)
    assert code == 2 and "404" in err


def test_cli_exit_code_when_the_service_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servicekit import free_port

    code, _, err = run_etm(capsys, "jobs", "status", "j-1", "--url", f"http://127.0.0.1:{free_port()}",
                             "--retries", "2")
    assert code == 3 and "cannot reach" in err


def test_leaderboard(client: Client, kit: ServiceKit, ids: dict[str, Any], done: dict[str, Any],
                     capsys: pytest.CaptureFixture[str]) -> None:
    lb = client.leaderboard(ids["dataset"])
    assert lb.dataset == ids["dataset"] and lb.boards
    cfg_all = next(b for b in lb.boards if b["config"].get("ood_dataset") == ids["ood"])
    # The job and its cache hit share a configuration; each candidate (its model ids) appears once.
    assert cfg_all["n_jobs"] >= 2 and len(cfg_all["candidates"]) == 2
    cmp_ = done["report"].comparison
    for name, m in cmp_.measures.items():
        ranks = {e["candidate"]: e["rank"] for e in cfg_all["measures"][name]["ranking"]}
        assert ranks == {e.candidate: e.rank for e in m.ranking}, name  # one board of one spec = the report
    only = client.leaderboard(ids["dataset"], measure="stability.ssim")
    assert all(set(b["measures"]) == {"stability.ssim"} for b in only.boards)
    with pytest.raises(ApiError) as exc:
        client.leaderboard("d-0000000000000000")
    assert exc.value.status == 404
    code, out, _ = run_etm(capsys, "leaderboard", ids["dataset"], "--url", kit.base_url)
    assert code == 0 and "stability.ssim" in out and "#1" in out


def test_mlflow_log(capsys: pytest.CaptureFixture[str], kit: ServiceKit, done: dict[str, Any], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (the optional 'mlflow' extra)")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    job_id, report = done["job"].id, done["report"]
    code, out, err = run_etm(capsys, "mlflow-log", job_id, "--tracking-uri", uri, "--experiment", "etm-test",
                             "--url", kit.base_url)
    assert code == 0, err
    run_id = out.strip()
    ml = MlflowClient(tracking_uri=uri)
    exp = ml.get_experiment_by_name("etm-test")
    parent = ml.get_run(run_id)
    assert parent.data.tags["etm.job_id"] == job_id and parent.info.status == "FINISHED"
    assert parent.data.params["method"] == "gradcam" and parent.data.params["candidates"] == "a,b"
    arts = {a.path for a in ml.list_artifacts(run_id)}
    assert {"report.json", "report.html", "overlays"} <= arts
    assert {a.path for a in ml.list_artifacts(run_id, "overlays")} >= {"overlays/overlay_a_00.png"}
    children = ml.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    by_name = {r.data.tags["etm.candidate"]: r for r in children}
    assert set(by_name) == {"a", "b"}
    for cand in ("a", "b"):
        metrics = by_name[cand].data.metrics
        assert metrics["entropy.spatial"] == pytest.approx(report.value(cand, "entropy.spatial"))
        lo, hi = report.measure(cand, "stability.ssim")["ci"]
        assert (metrics["stability.ssim.ci_low"], metrics["stability.ssim.ci_high"]) == pytest.approx((lo, hi))
        assert metrics["stability.ssim.rank"] == report.comparison.rank_of(cand, "stability.ssim")
        assert parent.data.metrics[f"{cand}.entropy.spatial"] == pytest.approx(report.value(cand, "entropy.spatial"))
    assert "ood_split" not in parent.data.params and "null" not in parent.data.params.values()  # unset: left out
    assert parent.data.params["seed"] == "0" and parent.data.params["max_images"] == "16"
    # Again, the same job: found by its id, nothing added (a retried CI step leaves one set of runs).
    code, out, err = run_etm(capsys, "mlflow-log", job_id, "--tracking-uri", uri, "--experiment", "etm-test",
                             "--url", kit.base_url)
    assert code == 0 and out.strip() == run_id and "nothing added" in err, err
    assert len(ml.search_runs([exp.experiment_id], filter_string=f"tags.`etm.job_id` = '{job_id}'")) == 3
    assert mlflow.__version__


def test_mlflow_log_into_an_existing_training_run_twice(capsys: pytest.CaptureFixture[str], kit: ServiceKit,
                                                         done: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's habits: the server from MLFLOW_TRACKING_URI, the job logged into the model's own training run,
    twice (a retried step), giving one set of metrics and one child run per candidate."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (the optional 'mlflow' extra)")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ml = MlflowClient(tracking_uri=uri)
    exp_id = ml.create_experiment("training", artifact_location=(tmp_path / "artifacts").as_uri())
    train = ml.create_run(exp_id, run_name="train run0")
    ml.log_metric(train.info.run_id, "loss", 0.25)
    job_id, report = done["job"].id, done["report"]
    for attempt in range(2):
        code, out, err = run_etm(capsys, "mlflow-log", job_id, "--run-id", train.info.run_id, "--no-artifacts",
                                 "--url", kit.base_url)
        assert code == 0 and out.strip() == train.info.run_id, err
        assert ("nothing added" in err) == (attempt == 1), err
    run = ml.get_run(train.info.run_id)
    assert run.info.status == "RUNNING"  # not ours to end
    assert run.data.metrics["loss"] == 0.25 and run.data.params["etm.method"] == "gradcam"
    history = ml.get_metric_history(train.info.run_id, "etm.a.entropy.spatial")
    assert [m.value for m in history] == [pytest.approx(report.value("a", "entropy.spatial"))]  # one, not two
    children = ml.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{train.info.run_id}'")
    assert sorted(r.data.tags["etm.candidate"] for r in children) == ["a", "b"]
    for r in children:
        assert len(ml.get_metric_history(r.info.run_id, "entropy.spatial")) == 1
    code, _, err = run_etm(capsys, "mlflow-log", job_id, "--run-id", "0" * 32, "--url", kit.base_url)
    assert code == 2 and "no run" in err, err


def test_python_m_client_cli_runs(kit: ServiceKit, done: dict[str, Any]) -> None:
    """The entry point as a process: exit code and stdout as a CI step sees them."""
    r = subprocess.run([PY, "-m", "client.cli", "jobs", "status", done["job"].id, "--json"], cwd=REPO,
                       env={"ETM_API_URL": kit.base_url, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"


def test_select_model_example(kit: ServiceKit, family_onnx: list[Path], dataset_dir: Path, tmp_path: Path) -> None:
    """examples/select_model.py end to end: push two families, score, pick, save the page."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    for p in family_onnx[1:]:  # a second family: two of the runs
        shutil.copy(p, other / p.name)
        shutil.copy(p.with_name(p.name + ".json"), other / (p.name + ".json"))
    out = tmp_path / "page.html"
    r = subprocess.run(
        [PY, "examples/select_model.py", "--url", kit.base_url, "--family", f"three={family_onnx[0].parent}",
         "--family", f"two={other}", "--dataset", str(dataset_dir), "--max-images", "12", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    chosen = re.search(r"chosen: (\w+)", r.stdout)
    assert chosen and chosen.group(1) in ("three", "two") and "Pareto set:" in r.stdout
    assert out.read_text().startswith("<!doctype html>")
