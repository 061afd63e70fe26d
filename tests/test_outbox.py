"""The outbox publishes committed changes from a background thread.

The broadcast task's ``apply_async`` is replaced by a recorder (the seam between the request path
and the broker); Celery's eager mode is turned off so the outbox is used, as in production.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from tests.testapp.factories import MessageFactory
from tests.testapp.models import Message, Room
from tests.testapp.streams import TagListStream
from turbo_async import outbox, publish, tasks, worker
from turbo_async.changes import Change, StreamAction
from turbo_async.models import OutboxEntry

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def not_eager() -> Iterator[None]:
    app = tasks.broadcast.app
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True


def unbatched(args: Any) -> list[Any]:
    """Each item a ``turbo_async.batch`` message carries, as a tuple: ``(label, pk, event,
    created)`` for a change, ``(stream, args, kwargs, action, options)`` for an action."""
    return [
        (item["label"], item["pk"], item["event"], item["created"]) if "label" in item
        else (item["stream"], item["args"], item["kwargs"], item["action"], item["options"])
        for item in args[0]
    ]


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch, not_eager: None) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every task message sent: (task name, args, options)."""
    sent: list[tuple[str, Any, dict[str, Any]]] = []
    for task in (tasks.broadcast,):
        def apply_async(args: Any, kwargs: Any = None, producer: Any = None, *, _name: str = task.name, **options: Any) -> None:
            json.dumps([args, kwargs])  # what Celery's JSON serializer would refuse
            sent.append((_name, args, options | {"producer": producer}))

        monkeypatch.setattr(task, "apply_async", apply_async)
    return sent


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch, not_eager: None) -> list[tuple[Any, str, Any]]:
    """One (args, thread, producer) per change, batched or not."""
    calls: list[tuple[Any, str, Any]] = []

    def apply_async(args: Any, kwargs: Any = None, producer: Any = None, **options: Any) -> None:
        json.dumps([args, kwargs])  # what Celery's JSON serializer would refuse
        calls.extend((one, threading.current_thread().name, producer) for one in unbatched(args))

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
    outbox._outbox.put([outbox.Entry(Change("testapp.message", 0, "save", True), "default")])
    original = publish.send

    def slow_send(items: list[tuple[Change, str]], producer: Any = None) -> None:
        if items[0][0].pk == 0:
            gate.wait(5)
        original(items, producer=producer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(publish, "send", slow_send)
        for change in changes:
            outbox._outbox.put([outbox.Entry(change, "default")])
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
    full.put_nowait([])
    monkeypatch.setattr(outbox._outbox, "start", lambda: full)
    with caplog.at_level(logging.ERROR, logger="turbo_async"):
        outbox._outbox.put([outbox.Entry(Change("testapp.message", 7, "save", True), "default")])
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
    monkeypatch.setattr(worker, "broadcast", run)
    with override_settings(TURBO_ASYNC={"ON_PUBLISH_ERROR": "inline"}):
        MessageFactory()
        assert outbox.flush(timeout=5)
    (connection,) = used
    assert connection is not connections["default"]  # the outbox thread's own
    # Closed once the thread is idle (IDLE_CLOSE_AFTER), not kept for the life of the process.
    deadline = time.monotonic() + 5
    while connection.connection is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connection.connection is None


# -- the broker is down: keep, retry, drop only what is too old or too much ------------------


class FlakyBroker:
    """``apply_async`` that fails like an unreachable Redis broker ``failures`` times, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Any] = []

    def __call__(self, args: Any, kwargs: Any = None, **options: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.extend(unbatched(args))


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch, not_eager: None) -> FlakyBroker:
    broker = FlakyBroker(failures=3)
    monkeypatch.setattr(tasks.broadcast, "apply_async", broker)
    return broker


def test_changes_wait_for_the_broker_and_go_out_in_commit_order(
    flaky: FlakyBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(TURBO_ASYNC={"OUTBOX_RETRY_BACKOFF_MAX": 0.05}):
        pks = [MessageFactory().pk for _ in range(3)]
        assert outbox.flush(timeout=5)
    assert [args[1] for args in flaky.sent] == pks
    assert f"the broadcast of testapp.message pk={pks[0]} (save)" in caplog.text
    assert "the broker is reachable again after" in caplog.text


def test_what_waited_longer_than_the_max_age_is_dropped_with_its_label_and_pk(
    flaky: FlakyBroker, caplog: pytest.LogCaptureFixture
) -> None:
    flaky.failures = 10**6
    with override_settings(TURBO_ASYNC={"OUTBOX_MAX_AGE": 0.2, "OUTBOX_RETRY_BACKOFF_MAX": 0.05}):
        message = MessageFactory()
        assert outbox.flush(timeout=5)  # answered once the entry is dropped
    assert flaky.sent == []
    assert (
        f"the broadcast of testapp.message pk={message.pk} (save) waited for the broker longer than "
        "OUTBOX_MAX_AGE (0.2 s) and is dropped"
    ) in caplog.text


def test_flush_honours_its_timeout_while_the_broker_is_down(flaky: FlakyBroker) -> None:
    flaky.failures = 10**6
    with override_settings(TURBO_ASYNC={"OUTBOX_RETRY_BACKOFF_MAX": 0.05}):
        MessageFactory()
        assert outbox.flush(timeout=0.3) is False
    flaky.failures = 0
    assert outbox.flush(timeout=5)


def test_flush_honours_its_timeout_when_the_queue_is_full() -> None:
    box = outbox.Outbox()
    box._queue = queue.Queue(maxsize=1)
    box._queue.put_nowait([])
    box._pid = os.getpid()  # a queue nobody drains: put() would block forever
    assert box.flush(timeout=0.1) is False


def test_a_dead_outbox_thread_is_started_again(
    published: list[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = outbox.Outbox()
    monkeypatch.setattr(outbox, "_outbox", box)
    drain = outbox.Outbox._run
    monkeypatch.setattr(outbox.Outbox, "_run", lambda self, commits: None)  # a thread that dies at once
    box.start()
    assert box._thread is not None
    box._thread.join(5)
    monkeypatch.setattr(outbox.Outbox, "_run", drain)
    message = MessageFactory()
    assert outbox.flush(timeout=5)
    assert [args[1] for args, _, _ in published] == [message.pk]
    assert "the outbox thread had died; started a new one" in caplog.text


def test_an_item_the_broker_cannot_take_is_logged_and_the_rest_go_out(
    published: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = Change("testapp.message", object(), "save", True, shadow="testapp.MessageStream.on_save")  # not JSON
    good = Change("testapp.message", 5, "save", True, shadow="testapp.MessageStream.on_save")
    outbox.put([(bad, []), (good, [])], "default")
    assert outbox.flush(timeout=5)
    assert [args[1] for args, _, _ in published] == [5]
    assert "could not queue the broadcast of testapp.message pk=<object object" in caplog.text


def test_publish_never_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, not_eager: None
) -> None:
    def apply_async(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("anything at all")

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    publish.publish(Change("testapp.message", 1, "save", shadow="x"), "default")
    publish.publish(StreamAction("testapp:RoomStream", [1], {}, "append", {}), "default")
    assert "could not queue the broadcast of testapp.message pk=1 (save): RuntimeError: anything at all" in caplog.text
    assert "could not queue the broadcast of testapp:RoomStream.append: RuntimeError" in caplog.text


def test_exit_drain_logs_what_could_not_go(flaky: FlakyBroker, caplog: pytest.LogCaptureFixture) -> None:
    flaky.failures = 10**6
    with override_settings(TURBO_ASYNC={"OUTBOX_EXIT_TIMEOUT": 0.2, "OUTBOX_RETRY_BACKOFF_MAX": 0.05}):
        message = MessageFactory()
        outbox.drain_at_exit()
    assert "exiting with 1 broadcast(s) not published after 0.2 s (OUTBOX_EXIT_TIMEOUT)" in caplog.text
    assert f"testapp.message pk={message.pk} (save)" in caplog.text
    flaky.failures = 0
    assert outbox.flush(timeout=5)


def test_an_application_callback_that_raises_first_does_not_lose_ours(
    published: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise RuntimeError("the application's callback")

    with pytest.raises(RuntimeError, match="the application's callback"), transaction.atomic():
        transaction.on_commit(fail)
        message = MessageFactory()
    assert outbox.flush(timeout=5)
    assert [args[1] for args, _, _ in published] == [message.pk]
    assert "an on_commit callback registered before turbo_async's raised" in caplog.text


# -- the database outbox -------------------------------------------------------------------------
# Marked ``database``: rows written in the saving transaction, savepoints rolled back, JSON args
# (jsonb on PostgreSQL) and the sweep's SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL only) depend
# on the backend, so make test runs them again on PostgreSQL.

DATABASE = {"OUTBOX": "database", "OUTBOX_SWEEP_INTERVAL": 3600}


@pytest.mark.database
def test_the_database_outbox_writes_a_row_in_the_saving_transaction(published: list[Any]) -> None:
    with override_settings(TURBO_ASYNC=DATABASE):
        with transaction.atomic():
            message = MessageFactory()
            [row] = OutboxEntry.objects.all()
            assert (row.task, row.args, row.kwargs, row.shadow) == (
                "turbo_async.batch",
                [[{"v": 2, "label": "testapp.message", "pk": message.pk, "event": "save", "created": True}]],
                {},
                "testapp.MessageStream.on_save",
            )
        assert outbox.flush(timeout=5)
    assert [args[1] for args, _, _ in published] == [message.pk]
    assert not OutboxEntry.objects.exists()  # published, then deleted


@pytest.mark.database
def test_a_rolled_back_save_leaves_no_outbox_row(published: list[Any]) -> None:
    with override_settings(TURBO_ASYNC=DATABASE):
        with transaction.atomic():
            MessageFactory()
            try:
                with transaction.atomic():
                    MessageFactory()
                    raise RuntimeError("roll the savepoint back")
            except RuntimeError:
                pass
            assert OutboxEntry.objects.count() == 1
        with pytest.raises(RuntimeError), transaction.atomic():
            MessageFactory()
            raise RuntimeError("roll everything back")
        assert outbox.flush(timeout=5)
    assert len(published) == 1
    assert not OutboxEntry.objects.exists()


@pytest.mark.database
def outbox_row(pk: Any) -> OutboxEntry:
    """The outbox row a commit writes for a save of the message ``pk``."""
    task, args, kwargs = publish.message([(Change("testapp.message", pk, "save", True), "default")])
    return OutboxEntry.objects.create(task=task, args=list(args), kwargs=kwargs, shadow="testapp.MessageStream.on_save")


def left_behind(rows: list[OutboxEntry]) -> None:
    OutboxEntry.objects.filter(pk__in=[row.pk for row in rows]).update(created_at=timezone.now() - timedelta(minutes=1))


@pytest.mark.database
def test_the_sweep_publishes_rows_left_behind_in_commit_order(messages: list[Any]) -> None:
    left_behind([outbox_row(pk) for pk in (7, 3, 9)])
    young = outbox_row(1)
    with override_settings(TURBO_ASYNC=DATABASE):
        assert outbox.sweep() == 3
    assert [(task, unbatched(args)[0][1], options["shadow"]) for task, args, options in messages] == [
        ("turbo_async.batch", pk, "testapp.MessageStream.on_save") for pk in (7, 3, 9)
    ]
    assert list(OutboxEntry.objects.all()) == [young]  # a live process's row: its own relay's


@pytest.mark.database
def test_the_sweep_publishes_rows_of_0_1_0_in_this_versions_format(messages: list[Any]) -> None:
    """Rows written by 0.1.0 (one positional task per change or action) go out as this version's
    one task (tests/integration/test_wire_compat.py runs them through a real worker)."""
    left_behind([
        OutboxEntry.objects.create(
            task="turbo_async.broadcast", args=["testapp.message", 7, "delete", False],
            kwargs={"snapshot": {"id": 7}, "using": "other"}, shadow="testapp.MessageStream.on_delete",
        ),
        OutboxEntry.objects.create(
            task="turbo_async.stream_action", args=["testapp:RoomStream", [1], {}, "refresh", {"request_id": "r1"}],
        ),
    ])
    with override_settings(TURBO_ASYNC=DATABASE):
        assert outbox.sweep() == 2
    assert [(task, args[0], options["shadow"]) for task, args, options in messages] == [
        ("turbo_async.batch", [{
            "v": 2, "label": "testapp.message", "pk": 7, "event": "delete", "created": False,
            "using": "other", "snapshot": {"id": 7},
        }], "testapp.MessageStream.on_delete"),
        ("turbo_async.batch", [{
            "v": 2, "stream": "testapp:RoomStream", "args": [1], "kwargs": {}, "action": "refresh", "options": {},
            "request_id": "r1",
        }], "testapp:RoomStream.refresh"),
    ]
    assert not OutboxEntry.objects.exists()


@pytest.mark.database
def test_an_outbox_row_that_cannot_be_read_is_logged_and_dropped(
    messages: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = OutboxEntry.objects.create(task="turbo_async.broadcast", args=["testapp.message"])
    left_behind([bad, outbox_row(5)])
    with override_settings(TURBO_ASYNC=DATABASE), caplog.at_level(logging.ERROR, logger="turbo_async"):
        assert outbox.sweep() == 2
    assert [unbatched(args)[0][1] for _, args, _ in messages] == [5]
    assert f"outbox row {bad.pk} cannot be read and is dropped: Not a broadcast message" in caplog.text
    assert not OutboxEntry.objects.exists()


@pytest.mark.database  # a second alias
def test_stream_later_goes_through_the_outbox_on_the_alias_of_its_transaction(
    published: list[Any],
) -> None:
    with transaction.atomic(using="other"):
        room = Room.objects.using("other").create(name="elsewhere")
        room.stream.later.update(text="hi", id="greeting")
    assert outbox.flush(timeout=5)
    [(args, thread, _)] = [call for call in published if call[0][0] == "testapp:RoomStream"]
    assert args[3:] == ("update", {"selector": None, "id": "greeting", "template": None, "context": None, "text": "hi"})
    assert thread == "turbo-async-outbox"


# -- adaptive batching: changes that queue up go in one message ---------------------------------


def hold_first_send(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Keep the outbox thread on its first lone send until the returned event is set, so the
    changes committed meanwhile queue up behind it."""
    gate = threading.Event()
    original = publish.send
    calls = {"n": 0}

    def held(items: Any, producer: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            gate.wait(5)
        original(items, producer)

    monkeypatch.setattr(publish, "send", held)
    return gate


def test_changes_that_queue_up_go_in_one_batch_and_a_lone_change_stays_its_hook(
    messages: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = hold_first_send(monkeypatch)
    first = MessageFactory()
    room = first.room
    queued = [MessageFactory(room=room).pk for _ in range(3)]
    gate.set()
    assert outbox.flush(timeout=5)
    (lone_task, lone_args, lone_options), (task, args, options) = messages[0], messages[-1]
    assert (lone_task, unbatched(lone_args), lone_options["shadow"], lone_options["argsrepr"]) == (
        "turbo_async.batch", [("testapp.message", first.pk, "save", True)], "testapp.MessageStream.on_save",
        f"('testapp.message', {first.pk}, 'save', True)",
    )
    assert task == "turbo_async.batch"
    assert [item["pk"] for item in args[0]] == queued
    assert options["shadow"] == "testapp.MessageStream.on_save x3"
    assert options["argsrepr"] == "; ".join(f"('testapp.message', {pk}, 'save', True)" for pk in queued)


def test_a_commit_of_a_change_and_an_action_goes_as_one_batch_named_after_both_hooks(
    messages: list[Any],
) -> None:
    """The demo's "post a message": the message's hook and the room list's refresh, one commit."""
    with transaction.atomic():
        message = MessageFactory()
        TagListStream().later.refresh()
    assert outbox.flush(timeout=5)
    [(task, _, options)] = messages
    assert task == "turbo_async.batch"
    assert options["shadow"] == "testapp.MessageStream.on_save + testapp.TagListStream.refresh"
    assert options["argsrepr"] == (
        f"('testapp.message', {message.pk}, 'save', True); ('testapp:TagListStream', [], 'refresh')"
    )


def test_changes_saved_back_to_back_wait_for_each_other_and_a_lone_change_goes_at_once(
    messages: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BATCH_LINGER (1 s here, its maximum, to see it): a change after a pause is published at
    once; one that comes soon after a publish waits for more, and a flush ends the wait."""
    monkeypatch.setattr(outbox._outbox, "_published_at", float("-inf"))  # a pause: nothing published yet

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(messages) < count:
            assert time.monotonic() < deadline, f"{len(messages)} messages sent, not {count}"
            time.sleep(0.01)

    with override_settings(TURBO_ASYNC={"BATCH_LINGER": 1.0}):
        first = MessageFactory()
        wait_for(1)  # did not linger: nothing was published before it
        burst = [MessageFactory(room=first.room).pk for _ in range(2)]
        time.sleep(0.3)
        assert len(messages) == 1, "a change right after a publish went alone instead of waiting"
        assert outbox.flush(timeout=5)
    (lone_task, lone_args, _), (task, args, _) = messages
    assert (lone_task, unbatched(lone_args)[0][1]) == ("turbo_async.batch", first.pk)
    assert task == "turbo_async.batch"
    assert [item["pk"] for item in args[0]] == burst


def test_batch_max_size_bounds_a_batch(messages: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    gate = hold_first_send(monkeypatch)
    with override_settings(TURBO_ASYNC={"BATCH_MAX_SIZE": 2}):
        room = MessageFactory().room
        queued = [MessageFactory(room=room).pk for _ in range(3)]
        gate.set()
        assert outbox.flush(timeout=5)
    assert [(task, [item["pk"] for item in args[0]]) for task, args, _ in messages[1:]] == [
        ("turbo_async.batch", queued[:2]), ("turbo_async.batch", queued[2:]),
    ]


def test_a_batch_the_broker_refuses_goes_item_by_item(
    published: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = Change("testapp.message", object(), "save", True, shadow="testapp.MessageStream.on_save")  # not JSON
    good = Change("testapp.message", 5, "save", True, shadow="testapp.MessageStream.on_save")
    outbox._outbox.put([outbox.Entry(good, "default"), outbox.Entry(bad, "default"), outbox.Entry(good, "default")])
    assert outbox.flush(timeout=5)
    assert [args[1] for args, _, _ in published] == [5, 5]
    assert "could not queue the broadcast of testapp.message pk=<object object" in caplog.text
