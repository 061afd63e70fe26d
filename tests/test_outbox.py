"""The outbox publishes committed changes from a background thread.

The broadcast task's ``apply_async`` is replaced by a recorder (the seam between the request path
and the broker); Celery's eager mode is turned off so the outbox is used, as in production.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from tests.testapp.factories import MessageFactory
from tests.testapp.models import Message
from turbo_async import outbox, tasks, worker
from turbo_async.changes import Change

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def not_eager() -> Iterator[None]:
    app = tasks.broadcast.app
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch, not_eager: None) -> list[tuple[Any, str, Any]]:
    calls: list[tuple[Any, str, Any]] = []

    def apply_async(args: Any, kwargs: Any = None, producer: Any = None, **options: Any) -> None:
        calls.append((args, threading.current_thread().name, producer))

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    return calls


def test_commit_hands_changes_to_the_outbox_thread(published: list[Any]) -> None:
    message = MessageFactory()
    assert outbox.flush(timeout=5)
    assert [(args, thread) for args, thread, _ in published] == [
        (("testapp.message", message.pk, "save", True), "turbo-async-outbox"),
    ]


def test_queued_changes_share_one_producer(published: list[Any]) -> None:
    changes = [Change("testapp.message", pk, "save", True) for pk in range(1, 4)]
    gate = threading.Event()
    # Hold the thread on a first batch so the next ones queue up behind it.
    outbox._outbox.put([Change("testapp.message", 0, "save", True)], "default")
    original = outbox.publish

    def slow_publish(change: Change, alias: str = "default", producer: Any = None) -> None:
        if change.pk == 0:
            gate.wait(5)
        original(change, alias, producer=producer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outbox, "publish", slow_publish)
        for change in changes:
            outbox._outbox.put([change], "default")
        gate.set()
        assert outbox.flush(timeout=5)
    producers = {id(producer) for args, _, producer in published if args[1] != 0}
    assert [args[1] for args, _, _ in published] == [0, 1, 2, 3]
    assert len(producers) == 1 and None not in {p for _, _, p in published}


def test_setting_off_publishes_at_commit(published: list[Any]) -> None:
    with override_settings(TURBO_ASYNC={"PUBLISH_IN_BACKGROUND": False}):
        message = MessageFactory()
    assert [(args, thread) for args, thread, _ in published] == [
        (("testapp.message", message.pk, "save", True), threading.current_thread().name),
    ]


def test_inside_a_task_changes_are_published_at_commit(published: list[Any]) -> None:
    from celery._state import _task_stack

    _task_stack.push(tasks.broadcast)
    try:
        MessageFactory()
    finally:
        _task_stack.pop()
    assert [thread for _, thread, _ in published] == [threading.current_thread().name]


def test_a_full_outbox_logs_what_it_drops(
    published: list[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import queue

    full: queue.Queue[Any] = queue.Queue(maxsize=1)
    full.put_nowait(([], "default"))
    monkeypatch.setattr(outbox._outbox, "_ensure_thread", lambda: full)
    with caplog.at_level(logging.ERROR, logger="turbo_async"):
        outbox._outbox.put([Change("testapp.message", 7, "save", True)], "default")
    assert "the broadcast of testapp.message pk=7 (save) is dropped" in caplog.text


def test_flush_without_a_thread_returns_at_once() -> None:
    assert outbox.Outbox().flush(timeout=0) is True


def test_inline_hooks_on_the_outbox_thread_leave_no_connection_open(
    monkeypatch: pytest.MonkeyPatch, not_eager: None
) -> None:
    from django.db import connections

    def apply_async(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("broker down")

    used: list[Any] = []

    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        Message.objects.count()  # what a hook does: it opens this thread's connection
        used.append(connections["default"])
        return {"frames": 0, "streams": 0}

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    monkeypatch.setattr(worker, "broadcast_change", run)
    with override_settings(TURBO_ASYNC={"ON_PUBLISH_ERROR": "inline"}):
        MessageFactory()
        assert outbox.flush(timeout=5)
    (connection,) = used
    assert connection is not connections["default"]  # the outbox thread's own
    assert connection.connection is None
