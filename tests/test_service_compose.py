"""docker-compose.yml speaks the same configuration language as the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from etm.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_etm_variable_in_compose_is_a_setting() -> None:
    compose = _compose()
    fields = {name.upper() for name in Settings.model_fields}
    seen: set[str] = set()
    for name, service in compose["services"].items():
        for key in _environment(service):
            if key.startswith("ETM_"):
                seen.add(key)
                assert key[4:] in fields, f"{name} sets {key}, which is not a field of etm.settings.Settings"
    assert "ETM_REDIS_URL" in seen and "ETM_STORE_URL" in seen


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (``${X:-default}``, ``${X:?error}``, ``$$``) with ``env`` as the shell."""

    def one(m: re.Match[str]) -> str:
        value, op = env.get(m["name"]), m["op"] or ""
        if op.endswith("?") and not value:
            raise ValueError(f"{m['name']} must be set: {m['arg']}")
        return value if value else (m["arg"] if op.endswith("-") else "")

    return _VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate((REPO / "docker-compose.yml").read_text(), env or {}))


def test_compose_file_follows_the_compose_specification() -> None:
    """Validated against the Compose Specification's JSON Schema (tests/data/compose_spec), as `docker compose
    config` would, with an empty environment: `docker compose up` needs no variable set."""
    schema = json.loads((REPO / "tests" / "data" / "compose_spec" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(_compose())
    with pytest.raises(jsonschema.ValidationError):  # the check has teeth
        validator.validate({"services": {"api": {"image": 3, "ports": "8000"}}})


def test_compose_shape() -> None:
    services = _compose()["services"]
    assert {"redis", "api", "worker-gpu", "worker-cpu", "flower"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes --appendfsync always" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    # Without a GPU: the default profile starts no GPU worker; with --profile gpu it serves the same queue.
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "-Q gpu,cpu" in " ".join(gpu["command"])
    assert "profiles" not in services["worker-cpu"] and "profiles" not in services["api"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "-Q cpu,inspect" in " ".join(services["worker-cpu"]["command"])
    assert "-Q gpu,gpu" in " ".join(_compose({"ETM_JOB_QUEUE": "gpu"})["services"]["worker-gpu"]["command"])
    # Health: workers answer a ping, the API is checked for readiness after a start period.
    for name in ("worker-cpu", "worker-gpu"):
        assert services[name]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "workers.healthcheck"]
    api_check = services["api"]["healthcheck"]
    assert "/readyz" in " ".join(api_check["test"]) and api_check["start_period"]
    # One CPU image, built once; Flower off by default, on loopback, behind a login.
    assert services["api"]["image"] == services["worker-cpu"]["image"] and "build" not in services["worker-cpu"]
    assert services["flower"]["profiles"] == ["monitoring"] and services["flower"]["ports"][0].startswith("127.0.0.1:")
    assert "FLOWER_BASIC_AUTH" in " ".join(services["flower"]["command"])
    assert all(s.get("env_file") == [{"path": ".env", "required": False}] for n, s in services.items() if n != "redis")
    for name in ("api", "worker-gpu"):
        dockerfile = services[name].get("build", {}).get("dockerfile")
        assert dockerfile is not None and (REPO / dockerfile).is_file(), dockerfile
        assert "COPY client ./client" in (REPO / dockerfile).read_text()  # the image has the etm command
    # Compose settings must pass the Settings checks (e.g. time limits below the visibility timeout).
    env = {k[4:].lower(): v for k, v in _environment(services["worker-cpu"]).items() if k.startswith("ETM_")}
    Settings(**env)


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "SERVICE.md").read_text()
    missing = [f"ETM_{n.upper()}" for n in Settings.model_fields if f"`ETM_{n.upper()}`" not in doc]
    assert not missing, f"add these settings to the table in docs/SERVICE.md: {missing}"
