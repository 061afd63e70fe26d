"""``turbo_async.broker``: what the checks, the management command, the refreshes and a failed
publish read of the Celery app's broker. Apps are real Celery apps, not current, configured per
test; clients talk to the session's real Redis server (Sentinel: tests/integration/test_sentinel.py).
A failed publish names the broker it tried and where its URL came from (the outbox's log line, and
a save from the shell of a project that does not load its Celery app)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.db import transaction
from django.test import override_settings
from kombu import Queue

from tests.test_command import make_project, run_in
from tests.testapp.factories import MessageFactory
from turbo_async import broker, outbox, tasks
from turbo_async.broker import describe_broker


def app_with(url: object = None, **conf: object) -> Celery:
    app = Celery("proj", set_as_current=False)
    app.conf.broker_url = url
    for key, value in conf.items():
        setattr(app.conf, key, value)
    return app


def test_an_unset_broker_is_celerys_default() -> None:
    assert broker.broker_urls(app_with(None)) == ["amqp://guest@localhost//"]
    assert broker.broker_url(app_with(None)) == "amqp://guest@localhost//"


def test_a_failover_list_is_every_url_with_its_password_and_shown_without() -> None:
    app = app_with("redis://:s3cret@a:6379/0; redis://b:6379/0")
    assert broker.broker_urls(app) == ["redis://:s3cret@a:6379/0", "redis://b:6379/0"]
    assert broker.broker_url(app) == "redis://a:6379/0; redis://b:6379/0"


def test_a_list_of_urls_is_a_failover_list() -> None:
    app = app_with(["sentinel://s1:26379", "sentinel://s2:26379"])
    assert broker.broker_urls(app) == ["sentinel://s1:26379", "sentinel://s2:26379"]


def test_the_write_url_wins() -> None:
    app = app_with("amqp://read//", broker_write_url="redis://write:6379/0")
    assert broker.broker_urls(app) == ["redis://write:6379/0"]
    assert broker.broker_is_redis(app)


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://r:6380/0",
        "REDIS://r:6379/0",
        "redis+socket:///run/redis.sock",
        "sentinel://s1:26379;sentinel://s2:26379",
        "sentinel://s1:26379;amqp://elsewhere//",  # the first URL decides
    ],
)
def test_redis_brokers(url: str) -> None:
    assert broker.broker_is_redis(app_with(url))


@pytest.mark.parametrize("url", ["amqp://guest@r//", "pyamqp://r//", "sqs://", "redis-but-not://x", "amqp://x//;redis://y"])
def test_brokers_that_are_not_redis(url: str) -> None:
    assert not broker.broker_is_redis(app_with(url))


def test_broker_transport_decides_over_the_url() -> None:
    assert broker.broker_is_redis(app_with("amqp://x//", broker_transport="redis"))
    assert not broker.broker_is_redis(app_with("redis://x:6379/0", broker_transport="amqp"))
    assert broker.broker_is_sentinel(app_with("redis://x:6379/0", broker_transport="sentinel"))


def test_only_sentinel_urls_are_sentinel() -> None:
    assert broker.broker_is_sentinel(app_with("sentinel://s1:26379;sentinel://s2"))
    assert not broker.broker_is_sentinel(app_with("redis://r:6379/0"))


# -- countdowns --------------------------------------------------------------------------------


def test_quorum_queues_on_rabbitmq_delay_natively() -> None:
    assert broker.native_delayed_delivery(app_with("amqp://r//", task_default_queue_type="quorum"))
    assert broker.native_delayed_delivery(app_with("pyamqp://r//", task_create_missing_queue_type="quorum"))
    queues = [Queue("turbo", queue_arguments={"x-queue-type": "quorum"})]
    assert broker.native_delayed_delivery(app_with("amqp://r//", task_queues=queues))


def test_classic_queues_and_redis_do_not() -> None:
    assert not broker.native_delayed_delivery(app_with("amqp://r//"))
    assert not broker.native_delayed_delivery(app_with("redis://r:6379/0", task_default_queue_type="quorum"))


def test_a_countdown_is_whole_seconds_up_with_native_delayed_delivery() -> None:
    quorum = app_with("amqp://r//", task_default_queue_type="quorum")
    assert broker.countdown(quorum, 0.3) == 1.0
    assert broker.countdown(quorum, 1.0) == 1.0
    assert broker.countdown(quorum, 1.2) == 2.0
    assert broker.countdown(quorum, 0) == 0.0
    assert broker.countdown(quorum, -1) == 0.0


def test_a_countdown_is_kept_elsewhere() -> None:
    assert broker.countdown(app_with("redis://r:6379/0"), 0.3) == 0.3
    assert broker.countdown(app_with("amqp://r//"), 0.3) == 0.3
    assert broker.countdown(app_with("redis://r:6379/0"), -2) == 0.0


# -- what a failed publish says it tried ---------------------------------------------------------

HINT = "add 'from .celery import app as celery_app' to proj/__init__.py"


@pytest.fixture
def no_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery reads these before any setting; the suite's processes may have them."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The app Celery makes up when no app was created, made the way ``celery._state`` does."""
    app = Celery("default", fixups=[], set_as_current=False)
    monkeypatch.setattr(broker.celery_state, "default_app", app)
    yield app


def test_the_settings_url_is_named_with_the_app_that_read_it(no_broker_env: None, settings: Any) -> None:
    assert describe_broker() == (
        f"{settings.CELERY_BROKER_URL} (the CELERY_BROKER_URL setting, read by the Celery app 'workers')"
    )


def test_a_password_is_masked(no_broker_env: None) -> None:
    app = Celery("proj", set_as_current=False)
    app.conf.broker_url = "redis://:s3cret@cache.internal:6380/2"
    assert describe_broker(app) == "redis://:**@cache.internal:6380/2 (broker_url of the Celery app 'proj')"


def test_the_environment_variable_wins_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
    app = Celery("proj", set_as_current=False)
    assert describe_broker(app) == "redis://127.0.0.1:6390/0 (the CELERY_BROKER_URL environment variable)"


def test_no_celery_app_names_celerys_default_amqp_and_the_import_to_add(
    no_broker_env: None, fallback: Celery
) -> None:
    assert describe_broker(fallback) == (
        "amqp://guest:**@localhost:5672// (Celery's default broker: no Celery app is loaded in this "
        f"process, so the CELERY_BROKER_URL setting is ignored; {HINT})"
    )


def test_an_app_without_broker_url_says_so(no_broker_env: None) -> None:
    app = Celery("proj", set_as_current=False)
    with override_settings(CELERY_BROKER_URL=None):
        assert describe_broker(app) == (
            "amqp://guest:**@localhost:5672// (Celery's default broker: the Celery app 'proj' has no "
            "broker_url; set CELERY_BROKER_URL)"
        )


@pytest.mark.django_db(transaction=True)
def test_the_outbox_names_the_broker_once_per_outage(
    no_broker_env: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    """Three failed attempts, one WARNING, with the broker and where its URL came from."""
    failures = {"left": 3}

    def apply_async(*args: Any, **kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionRefusedError(111, "Connection refused")

    app = tasks.broadcast.app
    app.conf.task_always_eager = False
    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    try:
        with override_settings(TURBO_ASYNC={"OUTBOX_RETRY_BACKOFF_MAX": 0.05}):
            with caplog.at_level(logging.WARNING, logger="turbo_async"):
                with transaction.atomic():
                    message = MessageFactory()
                assert outbox.flush(timeout=5)
    finally:
        app.conf.task_always_eager = True
    warnings = [r.getMessage() for r in caplog.records if "the broker is unreachable" in r.getMessage()]
    assert warnings == [
        "the broker is unreachable (ConnectionRefusedError: [Errno 111] Connection refused); the "
        f"broadcast of testapp.message pk={message.pk} (save) waits and is retried; tried "
        f"{settings.CELERY_BROKER_URL} (the CELERY_BROKER_URL setting, read by the Celery app 'workers')"
    ]
    assert failures["left"] == 0


NOTES_APP = {
    "__init__.py": "",
    "models.py": """
        from django.db import models

        class Note(models.Model):
            text = models.TextField()
        """,
    "streams.py": """
        import turbo_async as turbo

        from .models import Note

        class NoteStream(turbo.ModelStream):
            class Meta:
                model = Note

            def on_save(self, note, created, *args, **kwargs):
                self.append(text=note.text, id="notes")
        """,
}


@pytest.mark.integration
def test_a_save_from_the_shell_without_the_celery_import_names_amqp_and_the_fix(tmp_path: Path) -> None:
    """The newcomer's mistake: proj/__init__.py lacks the Celery import, Redis is fine, and the
    save goes to Celery's default amqp://localhost (nothing listens there on this machine)."""
    env = make_project(
        tmp_path, broker_url="redis://127.0.0.1:6379/0", redis_url="redis://127.0.0.1:6379/0",
        load_celery_app=False,
    )
    notes = tmp_path / "proj" / "notes"
    notes.mkdir()
    for name, text in NOTES_APP.items():
        (notes / name).write_text(textwrap.dedent(text))
    with (tmp_path / "proj" / "settings.py").open("a") as settings_file:
        settings_file.write(
            'INSTALLED_APPS += ["proj.notes"]\nTURBO_ASYNC = {"OUTBOX_EXIT_TIMEOUT": 0.5}\n'
        )
    migrated = run_in(tmp_path, env, "migrate", "--run-syncdb", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    result = run_in(
        tmp_path, env, "shell", "-c",
        "from proj.notes.models import Note; from turbo_async import outbox; "
        "Note.objects.create(text='hi'); outbox.flush(timeout=3)",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "the broker is unreachable (OperationalError: [Errno 111] Connection refused); the broadcast "
        "of notes.note pk=1 (save) waits and is retried; tried amqp://guest:**@localhost:5672// "
        "(Celery's default broker: no Celery app is loaded in this process, so the CELERY_BROKER_URL "
        f"setting is ignored; {HINT})"
    ) in result.stderr
    assert result.stderr.count("the broker is unreachable") == 1, result.stderr
