"""The sanity checks through the real service: the sandboxed model process randomises the weights in memory and
the report carries the verdict; a model with no layer to randomise ends its job with a problem+json that says
what to do, and a bad sanity parameter is refused at submission."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import export, tiny_family
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.timeout(300)


class _NoWeights(torch.nn.Module):
    """Logits from the per-channel means of the image: no convolution, linear layer or norm to randomise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).mean(dim=(2, 3))[:, :2] * 4.0


def _upload(kit: ServiceKit, path: Path) -> str:
    r = kit.upload_model(path, metadata=path.with_name(path.name + ".json").read_text())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_sanity_job_and_its_bad_inputs(tmp_path: Path, dataset_dir: Path) -> None:
    good = tiny_family(tmp_path / "fam", k=1, fmt="pt2")[0]
    flat = export(_NoWeights(), tmp_path / "flat.pt2", "pt2")
    with ServiceKit(tmp_path / "kit", n_workers=1) as kit:
        ids = {"good": _upload(kit, good), "flat": _upload(kit, flat)}
        ds = kit.upload_dataset(dataset_dir, "tiny.zip")
        assert ds.status_code == 201, ds.text

        def body(model: str, **kw: Any) -> dict[str, Any]:
            return {"candidates": [{"name": "a", "models": [ids[model]]}], "dataset": ds.json()["id"],
                    "measures": ["sanity"], "max_images": 8, "bootstrap_resamples": 100, **kw}

        bad = kit.submit(body("good", measure_params={"sanity": {"similarity": "cosine"}}))
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert "similarity must be one of 'spearman', 'pearson', 'ssim'" in bad.json()["detail"]

        r = kit.submit(body("good"))
        assert r.status_code == 202, r.text
        job = kit.wait(r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        report = kit.client.get(job["links"]["report"]).json()
        cand = report["candidates"][0]
        assert cand["measures"]["sanity.mprt"]["details"]["layers"] == ["fc", "features.2", "features.0"]
        assert cand["sanity"]["rule"] and "sanity" in report["comparison"]
        assert json.dumps(report)

        r = kit.submit(body("flat"))
        assert r.status_code == 202, r.text
        job = kit.wait(r.json()["id"])
        assert job["status"] == "failed"
        err = job["error"]
        assert err["status"] == 422 and err["title"] and err["instance"] == f"/v1/jobs/{job['id']}"
        assert "has no layer whose weights can be randomised" in err["detail"]
        assert "drop the sanity measures" in err["detail"]
