"""The example job of the README's walk-through, in one place: the README's curl command, the
devserver's banner, the OpenAPI example and the test that runs it all use this body."""

from __future__ import annotations

import json
import shlex
from typing import Any

# Built-in families xent and cyborg (5 training runs each) on 128 images of the built-in faces test
# split: four measures, modest bootstrap, so that it finishes in seconds on two cores.
EXAMPLE_JOB: dict[str, Any] = {
    "candidates": [
        {"name": "xent", "models": [f"builtin:xent/run{k}" for k in range(5)]},
        {"name": "cyborg", "models": [f"builtin:cyborg/run{k}" for k in range(5)]},
    ],
    "dataset": "builtin:faces",
    "split": "test",
    "max_images": 128,
    "measures": ["entropy", "stability", "agreement", "accuracy"],
    "method": "gradcam",
    "seed": 0,
    "bootstrap_resamples": 200,
    "batch_size": 32,
    "overlays": 4,
}


def example_body() -> str:
    """The example job as compact JSON."""
    return json.dumps(EXAMPLE_JOB, separators=(",", ":"))


def curl_submit(base_url: str = "http://127.0.0.1:8000") -> str:
    """The README's curl command submitting the example job."""
    return (
        f"curl -sS -X POST {base_url}/v1/jobs \\\n"
        "  -H 'Content-Type: application/json' -H 'Idempotency-Key: readme-example-1' \\\n"
        f"  -d {shlex.quote(example_body())}"
    )


# `make demo`: the same two families, every measure that needs no out-of-set data (about a minute).
DEMO_JOB: dict[str, Any] = {
    **EXAMPLE_JOB,
    "max_images": 128,
    "measures": ["entropy", "noise", "geometry", "stability", "degradation", "agreement", "accuracy"],
    "bootstrap_resamples": 1000,
    "overlays": 8,
}
