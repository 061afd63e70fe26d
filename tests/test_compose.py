"""compose.yaml as Docker Compose reads it: checked against the compose specification's JSON schema
(check-jsonschema's bundled copy, no network) and by Debian's docker-compose (no engine needed)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
REQUIRED = {"DJANGO_SECRET_KEY": "test-secret", "FLOWER_BASIC_AUTH": "admin:test-password"}


def docker_compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        raise AssertionError(
            "docker-compose is missing: apt-get install docker-compose (or make system-deps)"
        )
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config", *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )


@functools.cache
def resolved() -> dict[str, Any]:
    """The configuration docker-compose would run, anchors and variables resolved."""
    result = docker_compose(**REQUIRED)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = YAML(typ="safe").load(result.stdout)
    return config


def test_compose_file_matches_the_compose_spec() -> None:
    binary = Path(sys.executable).parent / "check-jsonschema"
    if not binary.exists():
        raise AssertionError("check-jsonschema is missing: pip install -e '.[test]'")
    result = subprocess.run(
        [str(binary), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_file() -> None:
    result = docker_compose("-q", **REQUIRED)
    assert result.returncode == 0, result.stderr


def test_runs_redis_migrate_web_worker_flower_and_prometheus() -> None:
    assert set(resolved()["services"]) == {"redis", "migrate", "web", "worker", "flower", "prometheus"}


def test_prometheus_scrapes_the_web_process_and_the_worker() -> None:
    prometheus = resolved()["services"]["prometheus"]
    config_file = ROOT / "docs" / "prometheus" / "prometheus.yml"
    assert any(str(config_file.parent) in str(volume) for volume in prometheus["volumes"]), prometheus["volumes"]
    config = YAML(typ="safe").load(config_file.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"web": ["web:8000"], "worker": ["worker:9808"]}
    worker = resolved()["services"]["worker"]["environment"]
    assert (worker["WORKER_METRICS_PORT"], worker["WORKER_METRICS_ADDRESS"]) == ("9808", "0.0.0.0")
    assert worker["PROMETHEUS_MULTIPROC_DIR"] in str(resolved()["services"]["worker"]["tmpfs"])


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = resolved()["services"]
    assert [name for name in services if name != "migrate" and "healthcheck" not in services[name]] == []


def test_web_and_worker_wait_for_redis_and_the_migration() -> None:
    services = resolved()["services"]
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_services_share_the_database_volume_and_redis() -> None:
    services = resolved()["services"]
    for name in ("migrate", "web", "worker", "flower"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0", name
        assert environment["DJANGO_DB_PATH"] == "/data/db.sqlite3", name
        assert environment["DJANGO_SECRET_KEY"] == "test-secret", name
        assert any(_is_db_volume(volume) for volume in services[name]["volumes"]), name


def _is_db_volume(volume: Any) -> bool:
    """``db:/data:rw`` (docker-compose 1) or its long form (Compose 2)."""
    if isinstance(volume, dict):
        return volume.get("source") == "db" and volume.get("target") == "/data"
    return str(volume).startswith("db:/data")


def test_workers_send_task_events_for_flower() -> None:
    assert "-E" in resolved()["services"]["worker"]["command"]


def test_refuses_to_start_without_a_secret_key() -> None:
    result = docker_compose("-q", FLOWER_BASIC_AUTH="admin:test-password")
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr


def test_refuses_to_start_flower_without_a_password() -> None:
    result = docker_compose("-q", DJANGO_SECRET_KEY="test-secret")
    assert result.returncode != 0
    assert "set FLOWER_BASIC_AUTH" in result.stderr


def test_prometheus_accepts_its_configuration_and_the_alerts() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus (or make system-deps)"
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "docs" / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout + result.stderr
