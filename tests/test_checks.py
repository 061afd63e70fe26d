"""System checks (``turbo_async/checks.py``): each misconfiguration and the message it gets.

Settings are changed with pytest-django's ``settings`` fixture; the Celery app checked is the
worker service's app (``workers``), the current app of this process, whose conf is restored after
each test.
"""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks, mail
from django.core.management import call_command

from turbo_async.checks import check_celery, check_channel_layer, check_streams, running_tests

REDIS_LAYER = "channels_redis.core.RedisChannelLayer"


@pytest.fixture
def celery_conf() -> Iterator[Any]:
    from workers import app

    saved = {key: app.conf[key] for key in ("task_always_eager", "broker_url")}
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


def test_redis_host_without_socket_timeout_warns(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer({"address": "redis://redis:6379/0"})
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W001"
    assert warning.hint == (
        "Add \"socket_timeout\": None to it: {'address': 'redis://redis:6379/0', 'socket_timeout': None}."
    )


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


def test_redis_url_string_host_warns_with_the_dict_form(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer("redis://redis:6379/0")
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W002"
    assert warning.hint == (
        "Write the host as a dict: {'address': 'redis://redis:6379/0', 'socket_timeout': None}."
    )


def test_redis_tuple_host_warns_with_the_dict_form(settings: Any) -> None:
    settings.CHANNEL_LAYERS = redis_layer(("redis", 6379))
    [warning] = check_channel_layer()
    assert warning.id == "turbo_async.W002"
    assert "{'address': 'redis://redis:6379', 'socket_timeout': None}" in str(warning.hint)


def test_redis_default_hosts_warn(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": REDIS_LAYER}}
    assert ids(check_channel_layer()) == ["turbo_async.W002"]


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
    assert warning.hint.startswith(f"Rename it to {meant}: def {meant}(self, instance")


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
