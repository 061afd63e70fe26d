"""``manage.py turbo_streams``: the listing runs in-process (call_command); ``--check`` runs as a
real subprocess with the Redis settings of integration processes (TURBO_TEST_SUBPROCESS=1),
against the real Redis server with a real worker process, against a Redis that no worker uses,
against a closed port, and in a project of its own whose Celery app is not loaded."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.conftest import current_layer, layer_backend
from tests.services import ROOT, CeleryWorker, RedisServer, free_port, subprocess_env


def run_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "turbo_streams", "--check", "--timeout", "3", *args],
        cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )


def make_project(
    directory: Path, *, broker_url: str, redis_url: str, load_celery_app: bool = True,
    daphne: bool = False,
) -> dict[str, str]:
    """A minimal ``startproject``-shaped project ``proj`` (Celery's Django layout) in ``directory``;
    returns the environment that runs ``python -m django`` in it. Without ``load_celery_app``,
    ``proj/__init__.py`` lacks ``from .celery import app as celery_app``: the newcomer's mistake."""
    package = directory / "proj"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from .celery import app as celery_app\n" if load_celery_app else ""
    )
    (package / "celery.py").write_text(
        textwrap.dedent(
            """
            import os

            from celery import Celery

            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
            app = Celery("proj")
            app.config_from_object("django.conf:settings", namespace="CELERY")
            app.autodiscover_tasks()
            """
        )
    )
    (package / "asgi.py").write_text(
        textwrap.dedent(
            """
            from django.core.asgi import get_asgi_application

            application = get_asgi_application()
            """
        )
    )
    apps = ["daphne"] if daphne else []
    apps += ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.staticfiles", "turbo_async"]
    (package / "settings.py").write_text(
        textwrap.dedent(
            f"""
            SECRET_KEY = "not-secret"
            DEBUG = True
            ALLOWED_HOSTS = ["127.0.0.1"]
            INSTALLED_APPS = {apps!r}
            ROOT_URLCONF = "proj.urls"
            STATIC_URL = "/static/"
            ASGI_APPLICATION = "proj.asgi.application"
            DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(directory / "db.sqlite3")!r}}}}}
            CHANNEL_LAYERS = {{
                "default": {{
                    "BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {{"hosts": [{{"address": {redis_url!r}, "socket_timeout": None}}]}},
                }}
            }}
            CELERY_BROKER_URL = {broker_url!r}
            """
        )
    )
    (package / "urls.py").write_text("urlpatterns = []\n")
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("TURBO_TEST_")}
    env["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT)])
    return env


def run_in(directory: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=directory, env=env, capture_output=True,
        text=True, timeout=60,
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
def test_check_passes_with_a_worker_on_the_queue(redis_server: RedisServer, worker: CeleryWorker) -> None:
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Broker: OK redis://127.0.0.1:{redis_server.port}/0" in result.stdout
    [workers] = [line for line in result.stdout.splitlines() if line.startswith("Workers:")]
    assert re.match(r"Workers: OK \d+ workers? on the queue 'celery' \(", workers), workers
    assert f"worker-{os.getpid()}@" in workers  # the fixture's worker, by its -n name
    assert re.search(r"; \d+ tasks? waiting in it$", workers), workers
    assert f"Channel layer: OK {layer_backend(current_layer())}" in result.stdout
    assert "Broker, workers and channel layer are ready for broadcasts." in result.stdout


@pytest.mark.integration
def test_check_counts_the_waiting_tasks_when_no_worker_consumes_the_queue(
    live_broker: RedisServer, worker: CeleryWorker
) -> None:
    """The worker runs, but on the default queue; broadcasts are routed to another one."""
    from workers import app

    queue = f"turbo_async_check_{secrets.token_hex(4)}"
    for pk in range(3):
        app.send_task("turbo_async.broadcast", args=("testapp.tag", pk, "save", True), queue=queue)
    # kombu keeps one Redis list per priority step: a prioritised task waits in another list.
    app.send_task("turbo_async.broadcast", args=("testapp.tag", 9, "save", True), queue=queue, priority=5)
    try:
        result = run_check(TURBO_TEST_TURBO_ASYNC=json.dumps({"QUEUE": queue}))
    finally:
        client = live_broker.client()
        client.delete(*client.keys(f"{queue}*"))
    assert result.returncode == 1, result.stdout + result.stderr
    [workers] = [line for line in result.stdout.splitlines() if line.startswith("Workers:")]
    assert workers.startswith(
        f"Workers: FAILED no worker consumes the queue '{queue}' (the workers that replied consume "
        "other queues: "
    ), workers
    assert f"worker-{os.getpid()}@" in workers and "(celery)" in workers
    assert workers.endswith("; 4 tasks waiting in it"), workers
    assert (
        f"CommandError: Broadcasts cannot go out: no worker consumes the queue '{queue}'. "
        f"Start one: celery -A workers worker -Q {queue}." in result.stderr
    )


@pytest.mark.integration
def test_check_fails_when_no_worker_replies(tmp_path: Path) -> None:
    """A Redis of its own, that no worker of this test run uses."""
    lonely = RedisServer(free_port(), tmp_path / "redis")
    lonely.start()
    try:
        result = run_check("--worker-timeout", "0.5", TURBO_TEST_REDIS_PORT=str(lonely.port))
    finally:
        lonely.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Broker: OK redis://127.0.0.1:{lonely.port}/0" in result.stdout
    assert (
        "Workers: FAILED no worker consumes the queue 'celery' (no worker replied within 0.5 s); "
        "0 tasks waiting in it" in result.stdout
    )
    assert "Channel layer: OK" in result.stdout
    assert "CommandError: Broadcasts cannot go out: no worker consumes the queue 'celery'." in result.stderr


@pytest.mark.integration
def test_check_fails_clearly_when_nothing_listens() -> None:
    closed = str(free_port())
    result = run_check(TURBO_TEST_REDIS_PORT=closed)
    assert result.returncode == 1
    assert (
        f"Broker: FAILED redis://127.0.0.1:{closed}/0 (OperationalError: Error 111 connecting to "
        f"127.0.0.1:{closed}." in result.stdout
    )
    assert "Workers: not checked (the broker is unreachable)" in result.stdout
    assert "Channel layer: FAILED (ConnectionError: Error 111 connecting to 127.0.0.1:" in result.stdout
    assert (
        "CommandError: Broadcasts cannot go out: the broker is unreachable and the channel layer is "
        f"unreachable. This process publishes to redis://127.0.0.1:{closed}/0 (the CELERY_BROKER_URL "
        "setting, read by the Celery app 'workers'): check that the broker runs and is reachable from here."
        in result.stderr
    )


@pytest.mark.integration
def test_check_names_celerys_default_broker_when_the_app_is_not_loaded(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """proj/__init__.py without the Celery import: CELERY_BROKER_URL is set, and ignored."""
    env = make_project(
        tmp_path, broker_url=redis_server.url, redis_url=redis_server.url, load_celery_app=False
    )
    result = run_in(tmp_path, env, "turbo_streams", "--check", "--timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ModuleNotFoundError" not in result.stdout + result.stderr
    assert "Check turbo_async.W003: WARNING No Celery app is loaded in this process" in result.stdout
    assert "Broker: FAILED amqp://guest:**@localhost:5672// (OperationalError:" in result.stdout
    assert (
        "CommandError: Broadcasts cannot go out: the broker is unreachable. This process publishes "
        "to amqp://guest:**@localhost:5672// (Celery's default broker: no Celery app is loaded in this "
        "process, so the CELERY_BROKER_URL setting is ignored; add 'from .celery import app as "
        "celery_app' to proj/__init__.py) (turbo_async.W003)"
        in result.stderr
    )


@pytest.mark.integration
def test_check_uses_the_loaded_app_of_the_same_project(tmp_path: Path, redis_server: RedisServer) -> None:
    """The same project with the import: the broker is the one CELERY_BROKER_URL names."""
    env = make_project(tmp_path, broker_url=redis_server.url, redis_url=redis_server.url)
    result = run_in(tmp_path, env, "turbo_streams", "--check", "--timeout", "2", "--worker-timeout", "0.5")
    assert f"Broker: OK redis://127.0.0.1:{redis_server.port}/0" in result.stdout, result.stdout + result.stderr
    assert "turbo_async.W003" not in result.stdout


@pytest.mark.integration
def test_check_names_the_missing_transport_library(tmp_path: Path, redis_server: RedisServer) -> None:
    """A broker whose kombu transport needs a library that is not installed (pymongo here; in a
    clean install, kombu's redis transport and ``packaging``); the password is not shown."""
    env = make_project(
        tmp_path, broker_url="mongodb://turbo:s3cret@127.0.0.1:27017/broker", redis_url=redis_server.url
    )
    result = run_in(tmp_path, env, "turbo_streams", "--check", "--timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "Broker: FAILED mongodb://turbo:**@127.0.0.1:27017/broker (ModuleNotFoundError: No module named "
        "'pymongo')" in result.stdout
    )
    assert 'install the broker\'s dependencies, e.g. pip install "celery[mongodb]".' in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
