"""docker-compose.yml speaks the same configuration language as the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from etm.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_etm_variable_in_compose_is_a_setting() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    fields = {name.upper() for name in Settings.model_fields}
    seen: set[str] = set()
    for name, service in compose["services"].items():
        for key in _environment(service):
            if key.startswith("ETM_"):
                seen.add(key)
                assert key[4:] in fields, f"{name} sets {key}, which is not a field of etm.settings.Settings"
    assert "ETM_REDIS_URL" in seen and "ETM_STORE_URL" in seen


def test_compose_shape() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker-gpu", "worker-cpu", "flower"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    gpu = services["worker-gpu"]
    assert "-Q gpu" in " ".join(gpu["command"])
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "-Q cpu" in " ".join(services["worker-cpu"]["command"])
    assert services["flower"]["profiles"] == ["monitoring"]
    for name in ("api", "worker-gpu", "worker-cpu"):
        dockerfile = services[name].get("build", {}).get("dockerfile")
        assert dockerfile is None or (REPO / dockerfile).is_file(), dockerfile
    # Compose settings must pass the Settings checks (e.g. time limits below the visibility timeout).
    env = {k[4:].lower(): v for k, v in _environment(services["worker-cpu"]).items() if k.startswith("ETM_")}
    env.pop("job_queue")  # "${ETM_JOB_QUEUE:-cpu}" is interpolated by compose
    Settings(**env)


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "SERVICE.md").read_text()
    missing = [f"ETM_{n.upper()}" for n in Settings.model_fields if f"`ETM_{n.upper()}`" not in doc]
    assert not missing, f"add these settings to the table in docs/SERVICE.md: {missing}"
