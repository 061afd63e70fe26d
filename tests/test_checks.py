"""System checks (``turbo_async/checks.py``): each misconfiguration and the message it gets.

Settings are changed with pytest-django's ``settings`` fixture; the Celery app checked is the
worker service's app (``workers``), the current app of this process, whose conf is restored after
each test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import checks, mail
from django.core.management import call_command
from django.test import override_settings

from tests.services import ROOT, RedisServer, free_port, subprocess_env, wait_for_port
from tests.test_command import make_project, run_in
from turbo_async import checks as turbo_checks
from turbo_async.checks import (
    RECOMMENDED_TRANSPORT_OPTIONS,
    broker_url,
    check_celery,
    check_channel_layer,
    check_redelivery,
    check_runserver,
    check_streams,
    fallback_app,
    running_tests,
    without_password,
)

REDIS_LAYER = "channels_redis.core.RedisChannelLayer"


@pytest.fixture
def celery_conf() -> Iterator[Any]:
    from workers import app

    saved = {
        key: app.conf[key]
        for key in ("task_always_eager", "broker_url", "broker_transport", "broker_transport_options")
    }
    yield app.conf
    app.conf.update(saved)


def redis_layer(*hosts: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": list(hosts)}}}


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


# -- channel layer -----------------------------------------------------------------------------


def test_missing_channel_layer_is_an_error(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {}
    [error] = check_channel_layer()
    assert error.id == "turbo_async.E001"
    assert error.msg == "No channel layer is configured, so broadcasts have nowhere to go."


def test_in_memory_layer_with_workers_is_an_error(settings: Any, celery_conf: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    celery_conf.task_always_eager = False
    [error] = check_channel_layer()
    assert error.id == "turbo_async.E002"
    assert "never reach a browser" in error.msg


def test_in_memory_layer_with_eager_tasks_is_fine(settings: Any, celery_conf: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    celery_conf.task_always_eager = True
    assert check_channel_layer() == []


@pytest.fixture
def redis_py_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """W001/W002 are about redis-py 8's default socket_timeout: these tests assert them whatever
    redis-py is installed (make test-lowest runs redis-py 5)."""
    monkeypatch.setattr(turbo_checks, "_redis_major_version", lambda: 8)


def test_redis_py_before_8_needs_no_socket_timeout(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turbo_checks, "_redis_major_version", lambda: 7)
    settings.CHANNEL_LAYERS = redis_layer({"address": "redis://redis:6379/0"})
    assert check_channel_layer() == []


@pytest.mark.usefixtures("redis_py_8")
def test_redis_host_without_socket_timeout_warns(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer({"address": "redis://redis:6379/0"})
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W001"
    assert warning.hint == (
        "Add \"socket_timeout\": None to it: {'address': 'redis://redis:6379/0', 'socket_timeout': None}."
    )


@pytest.mark.usefixtures("redis_py_8")
def test_redis_host_with_a_numeric_socket_timeout_warns(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer({"address": "redis://redis:6379/0", "socket_timeout": 5})
    assert ids(check_channel_layer()) == ["turbo_async.W001"]


def test_redis_host_with_socket_timeout_none_is_fine(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer({"address": "redis://redis:6379/0", "socket_timeout": None})
    assert check_channel_layer() == []


def test_sentinel_host_with_socket_timeout_none_is_fine(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer(
        {"sentinels": [("sentinel", 26379)], "master_name": "main", "socket_timeout": None}
    )
    assert check_channel_layer() == []


@pytest.mark.usefixtures("redis_py_8")
def test_redis_url_string_host_warns_with_the_dict_form(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer("redis://redis:6379/0")
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W002"
    assert warning.hint == (
        "Write the host as a dict: {'address': 'redis://redis:6379/0', 'socket_timeout': None}."
    )


@pytest.mark.usefixtures("redis_py_8")
def test_redis_tuple_host_warns_with_the_dict_form(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer(("redis", 6379))
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W002"
    assert "{'address': 'redis://redis:6379', 'socket_timeout': None}" in str(warning.hint)


@pytest.mark.usefixtures("redis_py_8")
def test_redis_default_hosts_warn(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": REDIS_LAYER}}
    assert ids(check_channel_layer()) == ["turbo_async.W002"]


@pytest.mark.parametrize(
    "host", [{"address": "redis://redis:6379/0"}, "redis://redis:6379/0", ("redis", 6379)]
)
def test_pubsub_layer_hosts_need_no_socket_timeout(settings: Any, host: Any) -> None:
    # The pub/sub layer polls its subscriber connection with a timeout of its own: redis-py 8's
    # 5 s socket_timeout does not stop it receiving, so W001/W002 would only be noise there.
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [host]}}
    }
    assert check_channel_layer() == []


@pytest.mark.usefixtures("redis_py_8")
def test_redis_host_password_is_not_shown(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer({"host": "redis", "password": "s3cret"})
    [warning] = check_channel_layer()
    assert "s3cret" not in warning.msg
    assert "s3cret" not in str(warning.hint)


# -- Celery ------------------------------------------------------------------------------------


def test_missing_broker_warns(settings: Any, celery_conf: Any) -> None:
    del settings.CELERY_BROKER_URL
    celery_conf.task_always_eager = False
    celery_conf.broker_url = None
    [warning] = check_celery()
    assert warning.id == "turbo_async.W003"
    assert warning.msg == (
        "The Celery app 'workers' has no broker_url, so broadcast tasks go to Celery's default "
        "broker amqp://guest@localhost//."
    )


def test_configured_broker_is_fine(celery_conf: Any) -> None:
    celery_conf.task_always_eager = False
    celery_conf.broker_url = "amqp://user:pass@rabbitmq:5672//"
    assert check_celery() == []


@pytest.fixture
def no_celery_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """This thread as in a project whose proj/__init__.py never imports its Celery app: Celery's
    current_app then makes up its fallback app (celery._state), restored afterwards."""
    state: Any = importlib.import_module("celery._state")
    monkeypatch.setattr(state._tls, "current_app", None)
    monkeypatch.setattr(state, "default_app", None)


def test_no_loaded_celery_app_warns_even_with_a_broker_setting(settings: Any, no_celery_app: None) -> None:
    settings.CELERY_BROKER_URL = "redis://:s3cret@redis:6379/0"
    [warning] = check_celery()
    assert warning.id == "turbo_async.W003"
    assert warning.msg.startswith(
        "No Celery app is loaded in this process, so broadcast tasks go to Celery's default app "
        "and its broker amqp://guest@localhost//. CELERY_BROKER_URL (redis://redis:6379/0) is set "
        "but ignored: no app reads it. (The app(s) "
    )
    # The suite's app exists, but not for this thread: it is named, with what to do.
    assert "'workers'" in warning.msg
    assert warning.msg.endswith("create your app before anything uses celery.current_app.)")
    assert "'from .celery import app as celery_app'" in str(warning.hint)


def test_fallback_app_is_told_from_a_loaded_app(no_celery_app: None) -> None:
    from celery import Celery, current_app

    assert fallback_app(current_app)
    assert current_app.main == "default"
    assert not fallback_app(Celery("proj", set_as_current=False))
    assert not fallback_app(Celery(set_as_current=False))  # a project's app may be unnamed


def test_the_suites_loaded_app_is_not_the_fallback() -> None:
    from celery import current_app

    assert not fallback_app(current_app)


@pytest.mark.parametrize(
    ("url", "shown"),
    [("redis://:s3cret@redis:6379/0", "redis://redis:6379/0"),
     ("amqp://turbo:s3cret@rabbit:5672/vhost", "amqp://turbo@rabbit:5672/vhost"),
     ("redis://h1:6379/0;redis://u:s3cret@h2:6379/0", "redis://h1:6379/0;redis://u@h2:6379/0"),
     ("memory://", "memory://")],
)
def test_broker_urls_are_shown_without_password(url: str, shown: str) -> None:
    assert without_password(url) == shown


def test_broker_url_is_celerys_default_when_unset(celery_conf: Any) -> None:
    from workers import app

    celery_conf.broker_url = None
    assert broker_url(app) == "amqp://guest@localhost//"


# -- redelivery (W008) ----------------------------------------------------------------------


def test_redis_broker_without_visibility_timeout_warns_with_what_to_set(celery_conf: Any) -> None:
    celery_conf.task_always_eager = False
    celery_conf.broker_url = "redis://:s3cret@redis:6379/0"
    celery_conf.broker_transport_options = {"socket_timeout": 2}
    [warning] = check_redelivery()
    assert warning.id == "turbo_async.W008"
    assert warning.msg == (
        "Redis is the Celery broker (redis://redis:6379/0) and CELERY_BROKER_TRANSPORT_OPTIONS sets "
        "no visibility_timeout: a broadcast whose worker dies mid-task (SIGKILL, out of memory, a "
        "lost machine) is handed out again only after kombu's default of 3,600 s, plus up to 100 s "
        "until its restore sweep runs."
    )
    assert warning.hint == (
        "Set CELERY_BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': 300, "
        "'unacked_restore_interval': 10, 'unacked_restore_throttle': 1, 'socket_timeout': 2, "
        "'socket_connect_timeout': 2}: a killed worker's task then returns within about 310 s. Keep "
        "visibility_timeout above your slowest hook plus DELIVERY_RETRY_BACKOFF_MAX, or a task still "
        "running is handed out a second time."
    )


@pytest.mark.parametrize(
    "url",
    ["rediss://redis:6380/0", "sentinel://s1:26379;sentinel://s2:26379", "redis+socket:///run/redis.sock"],
)
def test_every_redis_transport_url_without_visibility_timeout_warns(celery_conf: Any, url: str) -> None:
    celery_conf.task_always_eager = False
    celery_conf.broker_url = url
    celery_conf.broker_transport_options = {}
    assert ids(check_redelivery()) == ["turbo_async.W008"]


def test_the_recommended_transport_options_are_kombu_redis_options() -> None:
    from kombu.transport.redis import Channel

    assert set(RECOMMENDED_TRANSPORT_OPTIONS) <= set(Channel.from_transport_options)


@pytest.mark.parametrize(
    "options", [{"visibility_timeout": 300}, RECOMMENDED_TRANSPORT_OPTIONS, {"visibility_timeout": 3600}]
)
def test_redis_broker_with_a_visibility_timeout_is_fine(celery_conf: Any, options: dict[str, Any]) -> None:
    celery_conf.task_always_eager = False
    celery_conf.broker_url = "redis://redis:6379/0"
    celery_conf.broker_transport_options = options
    assert check_redelivery() == []


@pytest.mark.parametrize("url", ["amqp://turbo@rabbitmq:5672//", "pyamqp://rabbitmq//", None])
def test_other_brokers_need_no_visibility_timeout(celery_conf: Any, url: str | None) -> None:
    # RabbitMQ returns an unacknowledged task as soon as the worker's connection drops; None is
    # Celery's default broker (amqp), which W003 reports.
    celery_conf.task_always_eager = False
    celery_conf.broker_url = url
    celery_conf.broker_transport_options = {}
    assert check_redelivery() == []


def test_an_explicit_redis_transport_warns_whatever_the_url(celery_conf: Any) -> None:
    celery_conf.task_always_eager = False
    celery_conf.broker_url = "amqp://elsewhere//"
    celery_conf.broker_transport = "redis"
    celery_conf.broker_transport_options = {}
    assert ids(check_redelivery()) == ["turbo_async.W008"]


def test_eager_tasks_need_no_visibility_timeout(celery_conf: Any) -> None:
    celery_conf.task_always_eager = True
    celery_conf.broker_url = "redis://redis:6379/0"
    celery_conf.broker_transport_options = {}
    assert check_redelivery() == []


def test_no_loaded_celery_app_leaves_the_broker_to_w003(settings: Any, no_celery_app: None) -> None:
    settings.CELERY_BROKER_URL = "redis://redis:6379/0"
    assert check_redelivery() == []


@pytest.mark.integration
def test_manage_py_check_warns_when_proj_init_does_not_load_the_app(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A real project, checked by a real ``manage.py check``: only the import line differs."""
    missing, loaded = tmp_path / "missing", tmp_path / "loaded"
    missing.mkdir()
    loaded.mkdir()
    without = run_in(
        missing, make_project(missing, broker_url=redis_server.url, redis_url=redis_server.url,
                              load_celery_app=False),
        "check",
    )
    assert "(turbo_async.W003) No Celery app is loaded in this process" in without.stderr, without.stderr
    assert "CELERY_BROKER_URL (redis://127.0.0.1:" in without.stderr
    with_app = run_in(
        loaded, make_project(loaded, broker_url=redis_server.url, redis_url=redis_server.url), "check"
    )
    assert with_app.returncode == 0, with_app.stderr
    # The app is loaded; the one thing left is the Redis broker's visibility_timeout, unset here.
    assert "turbo_async.W003" not in with_app.stderr, with_app.stderr
    assert "System check identified 1 issue (0 silenced)" in with_app.stdout + with_app.stderr
    assert "(turbo_async.W008) Redis is the Celery broker (redis://127.0.0.1:" in with_app.stderr


def test_eager_tasks_outside_tests_warn(celery_conf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mail, "outbox")  # what Django's test environment sets up
    monkeypatch.setattr(sys, "argv", ["manage.py", "runserver"])
    assert not running_tests()
    celery_conf.task_always_eager = True
    [warning] = check_celery()
    assert warning.id == "turbo_async.W004"
    assert "inside the request that saved the row" in warning.msg


def test_eager_tasks_in_tests_are_fine(celery_conf: Any) -> None:
    assert running_tests()
    celery_conf.task_always_eager = True
    assert check_celery() == []


# -- runserver --------------------------------------------------------------------------------


def test_wsgi_runserver_warns_that_websockets_will_not_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["manage.py", "runserver"])
    [warning] = check_runserver()
    assert warning.id == "turbo_async.W007"
    assert warning.msg == (
        "manage.py runserver is Django's WSGI development server here: pages load, but the "
        "WebSocket of {% turbo_subscribe %} gets a 404, so no broadcast reaches a browser. "
        "'daphne' is not in INSTALLED_APPS."
    )
    assert str(warning.hint).startswith("Put 'daphne' first in INSTALLED_APPS")


def test_runserver_of_another_app_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Daphne's (or any ASGI) runserver: get_commands() names the app whose command wins.
    (Putting daphne into INSTALLED_APPS here would register its own checks for the whole run;
    test_runserver_with_daphne_first_starts_daphne_without_w007 does that in a subprocess.)"""
    from django.core import management

    monkeypatch.setattr(sys, "argv", ["manage.py", "runserver"])
    monkeypatch.setattr(management, "get_commands", lambda: {"runserver": "daphne"})
    assert check_runserver() == []
    monkeypatch.setattr(management, "get_commands", lambda: {"runserver": "django.contrib.staticfiles"})
    assert [m.id for m in check_runserver()] == ["turbo_async.W007"]


def test_other_commands_say_nothing_about_runserver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["manage.py", "check"])
    assert check_runserver() == []


def start_runserver(directory: Path, env: dict[str, str]) -> str:
    """Start a real ``runserver``, wait until it listens, stop it; return what it printed."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, timeout=30, process=process)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    return output


@pytest.mark.integration
def test_runserver_shows_w007_as_it_starts(redis_server: RedisServer) -> None:
    output = start_runserver(ROOT, subprocess_env())
    assert "(turbo_async.W007) manage.py runserver is Django's WSGI development server" in output, output
    assert "Starting development server" in output


@pytest.mark.integration
def test_runserver_with_daphne_first_starts_daphne_without_w007(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = make_project(tmp_path, broker_url=redis_server.url, redis_url=redis_server.url, daphne=True)
    output = start_runserver(tmp_path, env)
    assert "Starting ASGI/Daphne" in output, output
    assert "turbo_async.W007" not in output


# -- streams -----------------------------------------------------------------------------------


@pytest.fixture
def streams_module() -> Iterator[Any]:
    """Define streams in a throwaway module, as a user's module would; forgotten afterwards."""
    created: list[str] = []

    def define(source: str) -> types.ModuleType:
        name = f"tests.check_streams_{len(created)}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        created.append(name)
        header = "import turbo_async as turbo\nfrom demo.chat.models import Message\nfrom tests.testapp.models import Plain\n"
        exec(compile(header + textwrap.dedent(source), name, "exec"), module.__dict__)
        return module

    yield define
    for name in created:
        del sys.modules[name]


def stream_messages(module: types.ModuleType, check_id: str) -> list[checks.CheckMessage]:
    return [
        m for m in check_streams()
        if m.id == check_id and getattr(m.obj, "__module__", None) == module.__name__
    ]


@pytest.mark.parametrize(
    ("name", "meant"),
    [("on_saved", "on_save"), ("on_create", "on_save"), ("on_update", "on_save"),
     ("on_delete_", "on_delete"), ("onsave", "on_save"), ("on_deleted", "on_delete")],
)
def test_misspelled_hook_warns(streams_module: Any, name: str, meant: str) -> None:
    module = streams_module(
        f"""
        class PlainStream(turbo.ModelStream):
            class Meta:
                model = Plain

            def {name}(self, instance, *args, **kwargs):
                pass
        """
    )
    [warning] = stream_messages(module, "turbo_async.W005")
    assert warning.msg.startswith(f"PlainStream.{name}() looks like a misspelled {meant}() hook")
    assert str(warning.hint).startswith(f"Rename it to {meant}: def {meant}(self, instance")


def test_helper_methods_are_not_taken_for_hooks(streams_module: Any) -> None:
    module = streams_module(
        """
        class PlainStream(turbo.ModelStream):
            class Meta:
                model = Plain

            def on_save(self, instance, created, *args, **kwargs):
                pass

            def on_state(self):
                pass

            def render_save(self):
                pass
        """
    )
    assert stream_messages(module, "turbo_async.W005") == []


@pytest.mark.parametrize(
    ("hook", "signature"),
    [("on_save", "(self, instance, created)"), ("on_save", "(self, instance)"),
     ("on_delete", "(self, instance)"), ("on_delete", "(self)")],
)
def test_hook_with_a_wrong_signature_is_an_error(streams_module: Any, hook: str, signature: str) -> None:
    module = streams_module(
        f"""
        class PlainStream(turbo.ModelStream):
            class Meta:
                model = Plain

            def {hook}{signature}:
                pass
        """
    )
    [error] = stream_messages(module, "turbo_async.E003")
    assert error.msg.startswith(f"PlainStream.{hook}(")
    assert "cannot be called the way the worker calls it" in error.msg


@pytest.mark.parametrize(
    "signature",
    ["(self, instance, created, *args, **kwargs)", "(self, instance, created, **kwargs)",
     "(self, instance, created=False, sender=None, using=None)"],
)
def test_accepted_on_save_signatures(streams_module: Any, signature: str) -> None:
    module = streams_module(
        f"""
        class PlainStream(turbo.ModelStream):
            class Meta:
                model = Plain

            def on_save{signature}:
                pass
        """
    )
    assert stream_messages(module, "turbo_async.E003") == []


def test_unregistered_model_stream_warns(streams_module: Any) -> None:
    module = streams_module(
        """
        class PlainStream(turbo.ModelStream):
            class Meta:
                model = Plain

            def on_save(self, instance, created, *args, **kwargs):
                pass
        """
    )
    [warning] = stream_messages(module, "turbo_async.W006")
    assert warning.msg == (
        f"{module.__name__}.PlainStream is a ModelStream that is not registered, so its hooks "
        "never run and testapp.Plain has no .stream."
    )


def test_second_model_stream_for_a_model_warns_naming_both(streams_module: Any) -> None:
    module = streams_module(
        """
        class OtherMessageStream(turbo.ModelStream):
            class Meta:
                model = Message
        """
    )
    [warning] = stream_messages(module, "turbo_async.W006")
    assert warning.msg == (
        f"{module.__name__}.OtherMessageStream is a second ModelStream for chat.Message; "
        "demo.chat.streams.MessageStream is the registered one, so the hooks of "
        "OtherMessageStream never run."
    )


def test_abstract_model_streams_are_not_checked(streams_module: Any) -> None:
    module = streams_module(
        """
        class BaseStream(turbo.ModelStream):
            class Meta:
                abstract = True

            def on_saved(self):
                pass
        """
    )
    assert [m for m in check_streams() if getattr(m.obj, "__module__", None) == module.__name__] == []


# -- the suite's own configuration -------------------------------------------------------------


def test_test_settings_pass_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    """tests/settings.py: eager Celery + in-memory layer is right in tests (outside tests,
    ``django-admin check --settings tests.settings`` shows turbo_async.W004, as expected)."""
    call_command("check", fail_level="WARNING")
    assert "no issues" in capsys.readouterr().out


def test_seed_streams_pass_every_check() -> None:
    assert [m for m in check_streams() if m.obj is not None and m.obj.__module__.startswith("demo.")] == []


# -- check --deploy (turbo_async/deploy_checks.py) ----------------------------------------------


def deploy_ids() -> list[str]:
    """What ``manage.py check --deploy`` reports of turbo_async's deployment checks."""
    from turbo_async import deploy_checks

    found = checks.run_checks(include_deployment_checks=True, tags=[deploy_checks.TAG])
    return sorted({i for i in ids(found) if i.startswith(("turbo_async.W1", "turbo_async.I1"))})


def test_a_websocket_route_without_origin_check_warns_at_deploy(settings: Any) -> None:
    from turbo_async.deploy_checks import check_websocket_origins

    settings.ALLOWED_HOSTS = ["example.com"]
    settings.ASGI_APPLICATION = "tests.test_security.unguarded"
    [warning] = check_websocket_origins()
    assert warning.id == "turbo_async.W101"
    assert warning.msg.startswith("The WebSocket route of tests.test_security.unguarded has no origin check")
    assert "turbo_async.W101" in deploy_ids()


@pytest.mark.parametrize("app", ["tests.test_security.guarded", "tests.asgi.application"])
def test_a_route_behind_our_origin_validator_passes_the_deploy_check(settings: Any, app: str) -> None:
    from turbo_async.deploy_checks import check_websocket_origins

    settings.ALLOWED_HOSTS = ["example.com"]
    settings.ASGI_APPLICATION = app
    assert check_websocket_origins() == []


def test_with_a_star_in_allowed_hosts_w009_speaks_for_the_origins(settings: Any) -> None:
    from turbo_async.deploy_checks import check_websocket_origins

    settings.ALLOWED_HOSTS = ["*"]
    settings.ASGI_APPLICATION = "tests.test_security.unguarded"
    assert check_websocket_origins() == []


def test_subscriptions_that_never_expire_warn_at_deploy(settings: Any) -> None:
    from turbo_async.deploy_checks import check_signature_max_age

    [warning] = check_signature_max_age()
    assert warning.id == "turbo_async.W102"
    assert "SIGNATURE_MAX_AGE" in warning.msg and "'SIGNATURE_MAX_AGE': 86400" in (warning.hint or "")
    settings.TURBO_ASYNC = {"SIGNATURE_MAX_AGE": 86400}
    assert check_signature_max_age() == []


@pytest.mark.parametrize(("timeout", "warned"), [(30, True), (40, True), (41, False), (300, False), (None, False)])
def test_a_visibility_timeout_shorter_than_a_task_may_wait_warns_at_deploy(
    celery_conf: Any, settings: Any, timeout: int | None, warned: bool
) -> None:
    """A retry waits up to 30 s (DELIVERY_RETRY_BACKOFF_MAX here), then 10 s (DELIVERY_TIMEOUT)."""
    from turbo_async.deploy_checks import check_visibility_timeout, shortest_visibility_timeout

    settings.TURBO_ASYNC = {"DELIVERY_RETRY_BACKOFF_MAX": 30, "REFRESH_MAX_WAIT": 5.0, "DELIVERY_TIMEOUT": 10.0}
    assert shortest_visibility_timeout() == 40
    celery_conf.task_always_eager = False
    celery_conf.broker_transport_options = {} if timeout is None else {"visibility_timeout": timeout}
    found = check_visibility_timeout()
    assert ids(found) == (["turbo_async.W103"] if warned else [])
    if warned:
        assert found[0].msg.startswith(
            f"CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] is {timeout} s, not more than 40 s"
        )


def test_a_rabbitmq_broker_has_no_visibility_timeout_to_check(celery_conf: Any) -> None:
    from turbo_async.deploy_checks import check_visibility_timeout

    celery_conf.task_always_eager = False
    celery_conf.broker_url = "amqp://guest@127.0.0.1:5672//"
    celery_conf.broker_transport_options = {"visibility_timeout": 1}
    assert check_visibility_timeout() == []


def test_the_memory_outbox_is_an_info_at_deploy(settings: Any) -> None:
    from turbo_async.deploy_checks import check_outbox

    [info] = check_outbox()
    assert (info.id, info.level) == ("turbo_async.I104", checks.INFO)
    settings.TURBO_ASYNC = {"OUTBOX": "database"}
    assert check_outbox() == []


def test_the_demo_settings_with_debug_and_make_demos_key_warn_at_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turbo_async import deploy_checks

    key_file = tmp_path / "secret_key"
    key_file.write_text("the-key-make-demo-wrote\n")
    monkeypatch.setattr(deploy_checks, "DEMO_KEY_FILE", key_file)  # absolute: replaces .demo/secret_key
    # One override: a second one stacked on it would read SETTINGS_MODULE as None (Django's
    # UserSettingsHolder has it as a class attribute).
    with override_settings(SETTINGS_MODULE="demo.settings", DEBUG=True, SECRET_KEY="the-key-make-demo-wrote"):
        [warning] = deploy_checks.check_demo_settings()
    assert warning.id == "turbo_async.W105"
    assert warning.msg.startswith(
        "These are turbo_async's demo settings, and DEBUG is on (DJANGO_DEBUG=1), which shows settings "
        f"and tracebacks to anyone; and SECRET_KEY is the one make demo generated and keeps in {key_file}"
    )
    with override_settings(SETTINGS_MODULE="demo.settings", DEBUG=False, SECRET_KEY="a-key-of-its-own"):
        assert deploy_checks.check_demo_settings() == []
    with override_settings(DEBUG=True):  # not the demo: Django's own security.W018 says it
        assert deploy_checks.check_demo_settings() == []


def test_deploy_checks_stay_out_of_a_plain_check() -> None:
    from turbo_async import deploy_checks

    found = checks.run_checks(include_deployment_checks=False, tags=[deploy_checks.TAG])
    assert not [i for i in ids(found) if i in ("turbo_async.W102", "turbo_async.I104")]
    assert {"turbo_async.W102", "turbo_async.I104"} <= set(deploy_ids())


def test_check_deploy_on_the_demo_with_debug_names_turbo_asyncs_deploy_checks(tmp_path: Path) -> None:
    """``manage.py check --deploy`` as a user runs it, on the demo as make demo starts it."""
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="demo.settings", DJANGO_DEBUG="1", DJANGO_SECRET_KEY="k" * 60,
        DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"),
    )
    env.pop("TURBO_TEST_SUBPROCESS")
    result = subprocess.run(
        [sys.executable, "demo/manage.py", "check", "--deploy"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "?: (turbo_async.W102) TURBO_ASYNC['SIGNATURE_MAX_AGE'] is None",
        "?: (turbo_async.I104) TURBO_ASYNC['OUTBOX'] is 'memory'",
        "?: (turbo_async.W105) These are turbo_async's demo settings, and DEBUG is on",
    ):
        assert line in result.stdout + result.stderr, result.stdout + result.stderr
