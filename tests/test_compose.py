"""docker-compose.yml only sets settings the app knows."""

from __future__ import annotations

from pathlib import Path

import yaml

from telemed.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_telemed_variable_in_compose_is_a_known_setting() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    used: set[str] = set()
    for service in compose["services"].values():
        environment = service.get("environment", {})
        names = (
            environment if isinstance(environment, dict) else [e.split("=")[0] for e in environment]
        )
        used.update(name for name in names if name.startswith(ENV_PREFIX))
    assert used, "the app service should be configured through TELEMED_* variables"
    assert used - known == set()


def test_compose_runs_the_production_like_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert {"app", "postgres", "redis", "minio", "coturn"} <= set(compose["services"])
    app_env = compose["services"]["app"]["environment"]
    assert app_env["TELEMED_DATABASE_URL"].startswith("postgresql")
    assert app_env["TELEMED_REDIS_URL"].startswith("redis://")
