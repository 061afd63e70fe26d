"""``manage.py turbo_streams``: the listing runs in-process (call_command); ``--check`` runs as a
real subprocess with the Redis settings of integration processes (TURBO_TEST_SUBPROCESS=1),
against the real Redis server and against a closed port."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command

from tests.services import ROOT, RedisServer, free_port, subprocess_env


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "turbo_streams", "--check", "--timeout", "3"],
        cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )


def test_lists_every_stream_with_model_hooks_and_queue() -> None:
    out = StringIO()
    call_command("turbo_streams", stdout=out, no_color=True)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines[0] == ["Stream", "Model", "Hooks", "Queue"]
    assert ["chat:MessageStream", "chat.Message", "on_save,", "on_delete", "celery"] in lines
    assert ["chat:RoomStream", "chat.Room", "-", "celery"] in lines
    assert ["chat:RoomListStream", "-", "-", "celery"] in lines
    assert ["testapp:TagStream", "testapp.Tag", "on_save", "celery"] in lines


def test_lists_the_dedicated_queue(settings: object) -> None:
    settings.TURBO_ASYNC = {"QUEUE": "turbo_async"}  # type: ignore[attr-defined]
    out = StringIO()
    call_command("turbo_streams", stdout=out, no_color=True)
    assert ["chat:MessageStream", "chat.Message", "on_save,", "on_delete", "turbo_async"] in [
        line.split() for line in out.getvalue().splitlines()
    ]


@pytest.mark.integration
def test_check_passes_against_the_real_redis(redis_server: RedisServer) -> None:
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Broker: OK redis://127.0.0.1:{redis_server.port}/0" in result.stdout
    assert "Channel layer: OK channels_redis.core.RedisChannelLayer" in result.stdout
    assert "Broker and channel layer are reachable." in result.stdout


@pytest.mark.integration
def test_check_fails_clearly_when_nothing_listens() -> None:
    closed = str(free_port())
    result = run_check(TURBO_TEST_REDIS_PORT=closed)
    assert result.returncode == 1
    assert f"Broker: FAILED (OperationalError: Error 111 connecting to 127.0.0.1:{closed}." in result.stdout
    assert "Channel layer: FAILED (ConnectionError: Error 111 connecting to 127.0.0.1:" in result.stdout
    assert (
        "CommandError: Broadcasts cannot go out: the broker and the channel layer failed."
        in result.stderr
    )
