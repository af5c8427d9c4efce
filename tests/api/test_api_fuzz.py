"""Schemathesis against openapi/openapi.json: every operation of the real service (own Redis, uvicorn,
one Celery worker, ETM_AUTH=keys) answers no 5xx and only what the document says (status codes,
content types, headers, bodies), for positive and negative generated requests.

Two runs: with a valid API key (every check, including schemathesis' own probe that sends an accepted
request again without the key and with a wrong one), and without any key, where every protected operation must answer
401 problem+json with a ``WWW-Authenticate`` challenge, whatever else the request carries.

Random ids only ever reach 404s, so half of the generated path parameters name resources that exist
(uploaded tiny models and datasets, a finished job and its artifacts): that is what makes the report,
CSV, artifact, leaderboard and delete operations answer 200/204/409 too. Half of the positive job and
upload bodies are made runnable (real ids, a real ONNX file or dataset zip), so accepted jobs (tiny: 8
images of 32x32 px) are queued, run, cached and replayed while the fuzzer goes on.

``ETM_FUZZ_EXAMPLES`` sets the examples per operation (bounded here; ``make fuzz`` raises it) and
``ETM_FUZZ_SUMMARY=1`` prints what every operation answered.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter, defaultdict
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.config import SchemathesisConfig
from schemathesis.transport.serialization import Binary

from tests.helpers.tiny import tiny_dataset, tiny_family
from tests.servicekit import REPO, ServiceKit, zip_folder

pytestmark = pytest.mark.timeout(1800)

EXAMPLES = int(os.environ.get("ETM_FUZZ_EXAMPLES", "25"))
SUMMARY = os.environ.get("ETM_FUZZ_SUMMARY", "") == "1"
DOCUMENT = REPO / "openapi" / "openapi.json"
# Security parameters are not generated: the keyed run sends the real key, the no-key run none at all.
CONFIG = SchemathesisConfig.from_dict(
    {"generation": {"mode": "all", "database": "none", "with-security-parameters": False}}
)
KEYED = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG)
# The no-key run covers the operations that declare security (all of /v1); health and metrics are open.
NO_KEY = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG).include(path_regex="^/v1/")
NO_KEY_EXAMPLES = max(5, EXAMPLES // 3)

# Filled by the ``kit`` fixture before any case is generated; read while generating.
KEY: dict[str, str] = {}
KNOWN: dict[str, list[str]] = {"model_id": [], "dataset_id": [], "job_id": [], "name": []}
# DELETE gets its own resources, so that the others stay for the operations that run after it.
DELETABLE: dict[str, list[str]] = {"model_id": [], "dataset_id": []}
# Real upload bytes: random bytes only ever reach the refusals, a real file the 201/200 answers.
UPLOADS: dict[str, bytes] = {}
SEEN: dict[str, Counter[int]] = defaultdict(Counter)
# No rate limits: a 429 would only stop the fuzzer from reaching the upload and job code.
NO_RATE_LIMITS = {
    "ETM_RATE_UPLOADS_PER_MINUTE": "0",
    "ETM_RATE_JOBS_PER_MINUTE": "0",
    # schemathesis repeats accepted cases with a wrong key: those 401s must not turn into 429s
    "ETM_AUTH_FAILURES_PER_KEY_PER_MINUTE": "0",
    "ETM_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE": "0",
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    k = ServiceKit(root / "kit", n_workers=1, env={"ETM_AUTH": "keys", **NO_RATE_LIMITS})
    k.start()
    try:
        KEY["value"] = k.create_key("fuzz")
        k.client.headers["Authorization"] = f"Bearer {KEY['value']}"
        *models, spare = [k.upload_model(p).json()["id"] for p in tiny_family(root / "models", k=3)]
        ds = k.upload_dataset(tiny_dataset(root / "ds", n_per_class=4), "tiny.zip").json()["id"]
        spare_ds = k.upload_dataset(tiny_dataset(root / "ds2", n_per_class=2, seed=1), "spare.zip").json()["id"]
        DELETABLE.update(model_id=[spare], dataset_id=[spare_ds])
        UPLOADS["POST /v1/models"] = tiny_family(root / "fresh", k=4)[3].read_bytes()  # bytes not yet uploaded
        UPLOADS["POST /v1/datasets"] = zip_folder(tiny_dataset(root / "ds3", n_per_class=2, seed=2))
        done = k.submit(
            {"candidates": [{"name": "a", "models": models}], "dataset": ds, "bootstrap_resamples": 100,
             "overlays": 2}
        ).json()["id"]
        assert k.wait(done, timeout=120)["status"] == "succeeded", k.logs()
        # The overlay PNGs: the JSON indexes have paths of their own (their names would route there, not here).
        artifacts = [a["name"] for a in k.client.get(f"/v1/jobs/{done}/artifacts").json()["items"]
                     if a["media_type"] == "image/png"]
        KNOWN.update(model_id=models, dataset_id=[ds], job_id=[done], name=artifacts)
        yield k
    finally:
        if SUMMARY:
            print_summary()
        k.stop()


def print_summary() -> None:
    total = sum(sum(c.values()) for c in SEEN.values())
    print(f"\nschemathesis: {total} requests over {len(SEEN)} operations "
          f"(examples per operation: {EXAMPLES} with a key, {NO_KEY_EXAMPLES} without)")
    for op in sorted(SEEN):
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(SEEN[op].items()))
        print(f"  {op:56s} {codes}")


def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy:
    """Half of the path parameters name a resource that exists (what the kit made)."""
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    pool = DELETABLE if context.operation.method.upper() == "DELETE" else KNOWN
    names = [n for n in path_parameters if pool.get(n)]
    if not names:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({n: st.sampled_from(pool[n]) for n in names})
    return st.one_of(st.just(path_parameters), real.map(lambda r: {**path_parameters, **r}))


def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    """Half of the job bodies name real models and datasets. Only string ids are swapped (ids have no
    constraints), so a negative body stays negative."""
    if context.operation.label != "POST /v1/jobs" or not isinstance(body, dict) or not KNOWN["model_id"]:
        return st.just(body)
    return st.one_of(st.just(body), st.integers(0, 2**16).map(lambda seed: with_real_ids(body, seed)))


for _schema in (KEYED, NO_KEY):
    _schema.hook(flatmap_path_parameters)
    _schema.hook(flatmap_body)


def with_real_ids(body: dict[str, Any], seed: int) -> dict[str, Any]:
    models, ds = KNOWN["model_id"], KNOWN["dataset_id"][0]
    out = dict(body)
    if isinstance(out.get("candidates"), list):
        out["candidates"] = [
            {**c, "models": [models[(seed + i) % len(models)] if isinstance(m, str) else m
                             for i, m in enumerate(c["models"])]}
            if isinstance(c, dict) and isinstance(c.get("models"), list) else c
            for c in out["candidates"]
        ]
    for key in ("dataset", "ood_dataset"):
        if isinstance(out.get(key), str):
            out[key] = ds
    return out


def half(body: dict[str, Any]) -> bool:
    """One positive body in two, chosen by its content (Hypothesis needs a deterministic test)."""
    return zlib.crc32(repr(sorted(body.items(), key=str)).encode()) % 2 == 0


def runnable_job(body: dict[str, Any]) -> dict[str, Any]:
    """The generated numbers on real models and data: generated measure/method parameters are nearly always
    refused, and accepted jobs (queued, cached, replayed by Idempotency-Key) must be fuzzed too."""
    keep = {k: body[k] for k in ("seed", "batch_size", "bootstrap_resamples", "max_images", "overlays") if k in body}
    return {"candidates": [{"name": "a", "models": KNOWN["model_id"]}], "dataset": KNOWN["dataset_id"][0],
            "measures": ["entropy", "accuracy"], **keep}


def make_runnable(case: Any) -> list[Any]:
    """Swap in a runnable body (see the module doc); returns the checks that cannot judge the swapped case."""
    if case.meta.generation.mode.is_positive and isinstance(case.body, dict) and half(case.body):
        if case.operation.label == "POST /v1/jobs":
            case.body = runnable_job(case.body)
        elif case.operation.label in UPLOADS:
            case.body = {"file": Binary(UPLOADS[case.operation.label])}
            # Schemathesis re-checks a changed case's body and calls any multipart body with binary data in it
            # negative (it cannot validate binary), so this positive, real upload would be judged as "invalid
            # data accepted".
            return [negative_data_rejection]
    return []


# Schema-valid requests that the service refuses by design, for reasons JSON Schema cannot state: an
# upload's bytes must be an ONNX/.pt2 model or a dataset archive (422/415), a job's ids must exist and its
# method must be available on its models (422). positive_data_acceptance is excluded there only.
SEMANTIC_REFUSALS = {"POST /v1/models", "POST /v1/datasets", "POST /v1/jobs"}
# The bounded run in `make test` draws the same examples every time (a CI result must not depend on
# luck); `make fuzz` (ETM_FUZZ_EXAMPLES set) explores new ones on every run.
SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(hypothesis.HealthCheck),
    "derandomize": "ETM_FUZZ_EXAMPLES" not in os.environ,
}


@KEYED.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, **SETTINGS)
def test_with_a_key_every_operation_conforms(case: Any, kit: ServiceKit) -> None:
    excluded = make_runnable(case)
    if case.operation.label in SEMANTIC_REFUSALS:
        excluded.append(positive_data_acceptance)
    # An explicit header: schemathesis then also sends each accepted case without it and with a wrong key.
    auth = {"Authorization": f"Bearer {KEY['value']}"}
    response = case.call_and_validate(base_url=kit.base_url, headers=auth, timeout=60, excluded_checks=excluded)
    SEEN[f"{case.operation.label} (key)"][response.status_code] += 1


@NO_KEY.parametrize()
@hypothesis.settings(max_examples=NO_KEY_EXAMPLES, **SETTINGS)
def test_without_a_key_every_protected_operation_is_401(case: Any, kit: ServiceKit) -> None:
    make_runnable(case)
    response = case.call(base_url=kit.base_url, timeout=60)
    SEEN[f"{case.operation.label} (no key)"][response.status_code] += 1
    if case.method.upper() != case.operation.method.upper():  # a probe with a method the path does not serve
        assert response.status_code == 405
        return
    assert response.status_code == 401, f"{case.operation.label} answered {response.status_code} without a key"
    assert response.headers["content-type"] == ["application/problem+json"]
    assert response.headers["www-authenticate"][0].startswith("Bearer")
    assert "API key" in response.json()["detail"]
    case.validate_response(response)  # 401 documented, problem body as the document says


def test_what_the_fuzzer_found_stays_fixed(kit: ServiceKit) -> None:
    """The fuzzer's finds, as plain requests: each was a 5xx or an answer the document did not allow."""
    c = kit.client  # carries the key
    r = c.options("/v1/models")  # Starlette named only the first route's method in Allow
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    long_id = "\U0001d54b" * 60  # ids whose store file name is too long for the OS were a 500
    for kind in ("models", "datasets", "jobs", "leaderboards"):
        assert c.get(f"/v1/{kind}/{long_id}").status_code == 404, kind
    body = {"candidates": [{"name": "a", "models": [long_id]}], "dataset": long_id}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 422 and "unknown model" in r.json()["detail"], r.text
    bad_utf8 = {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}
    r = c.post("/v1/jobs", **bad_utf8)  # FastAPI's undocumented 400
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    with kit.client_for(None) as anonymous:  # the body was judged before the key was asked for
        assert anonymous.post("/v1/jobs", **bad_utf8).status_code == 401
        assert anonymous.get("/v1/models/%0A0").status_code == 401  # no route matches a newline
