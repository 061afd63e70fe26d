"""The demo's settings are safe outside ``make demo``: no built-in secret key (anyone knowing it
could forge signed subscriptions and sessions) and DEBUG off unless asked for, in the settings
themselves, the Docker image and compose.yaml. ``make demo`` (demo/run.py) still needs nothing:
it gives its processes a generated key and DEBUG (tests/test_demo_run.py runs it with no
DJANGO_* variable at all)."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from demo import run
from tests.services import ROOT, free_port
from tests.test_compose import resolved

SETTINGS = ROOT / "demo" / "settings.py"
MISSING_KEY = "DJANGO_SECRET_KEY is not set. The demo has no built-in key: set DJANGO_SECRET_KEY"


def load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any DJANGO_* or test variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TURBO_TEST_"))}
    return {**env, **extra}


# demo/settings.py


@pytest.mark.parametrize("key", ["", "   "])
def test_settings_refuse_to_load_without_a_secret_key(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=MISSING_KEY):
        load_settings(monkeypatch, DJANGO_SECRET_KEY=key)


def test_the_refusal_says_how_to_make_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured) as refusal:
        load_settings(monkeypatch)
    assert "secrets.token_urlsafe(50)" in str(refusal.value)
    assert "make demo sets one for you" in str(refusal.value)
    assert 'export DJANGO_SECRET_KEY="$(cat .demo/secret_key)"' in str(refusal.value)


def test_settings_use_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(monkeypatch, DJANGO_SECRET_KEY="k" * 50)["SECRET_KEY"] == "k" * 50


def test_debug_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(monkeypatch, DJANGO_SECRET_KEY="k")["DEBUG"] is False
    assert load_settings(monkeypatch, DJANGO_SECRET_KEY="k", DJANGO_DEBUG="0")["DEBUG"] is False
    assert load_settings(monkeypatch, DJANGO_SECRET_KEY="k", DJANGO_DEBUG="1")["DEBUG"] is True


def test_manage_py_without_a_key_exits_with_the_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "manage.py"), "check"], cwd=ROOT,
        env=clean_env(DJANGO_DB_PATH=str(tmp_path / "db.sqlite3")), capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert MISSING_KEY in result.stderr


# Docker image


def dockerfile() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's ENV variables and its default command (CMD, exec form)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    command: list[str] = []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
        elif instruction == "CMD":
            command = json.loads(rest)
    return env, command


def test_the_image_sets_no_secret_key_and_no_debug() -> None:
    env, _ = dockerfile()
    assert env["DJANGO_SETTINGS_MODULE"] == "demo.settings"
    assert "DJANGO_SECRET_KEY" not in env
    assert "DJANGO_DEBUG" not in env


def test_the_image_default_command_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    """``docker run`` of the image without -e DJANGO_SECRET_KEY: its CMD exits with the message."""
    env, command = dockerfile()
    assert command[:2] == ["uvicorn", "demo.asgi:application"], command
    port = command.index("--port") + 1
    command[port] = str(free_port())  # not the image's 8000, which may be in use here
    image_env = {**env, "PYTHONPATH": str(ROOT), "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3")}
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, env=clean_env(**image_env), capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode != 0
    assert MISSING_KEY in result.stderr


# compose.yaml


def test_compose_runs_every_app_service_with_debug_off_by_default() -> None:
    services = resolved()["services"]
    for name in ("migrate", "web", "worker", "flower"):
        assert services[name]["environment"]["DJANGO_DEBUG"] == "0", name


# make demo's key


def test_make_demo_generates_a_key_once_and_keeps_it_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "STATE_DIR", tmp_path / ".demo")
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    key = run.secret_key()
    assert len(key) >= 50
    kept = tmp_path / ".demo" / "secret_key"
    assert kept.read_text().strip() == key
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert run.secret_key() == key  # the next run: sessions (the remembered name) survive


def test_make_demo_uses_the_key_given_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "STATE_DIR", tmp_path / ".demo")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "given-key")
    assert run.secret_key() == "given-key"
    assert not (tmp_path / ".demo").exists()
