"""The worker side: reload, hook, render, one group_send per stream.

``worker.broadcast_change`` is the task body; it runs here in-process with Channels' in-memory layer, which
records what reaches each group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings

import turbo_async as turbo
from tests.testapp.factories import DocumentFactory, MessageFactory, ProbeFactory, RoomFactory, TagFactory
from tests.testapp.models import Message, Room
from tests.testapp.streams import MessageStream, TagListStream
from turbo_async import changes, delivery, worker
from turbo_async.changes import snapshot
from turbo_async.exceptions import DeliveryError, UnknownStream

pytestmark = pytest.mark.django_db


@pytest.fixture
def group_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    original = delivery.group_send

    def record(group: str, message: dict[str, Any]) -> None:
        sent.append((group, message))
        original(group, message)

    monkeypatch.setattr(delivery, "group_send", record)
    return sent


def listen(stream: turbo.Stream) -> Any:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(stream.broadcastable_stream_name, channel)
    return lambda: async_to_sync(layer.receive)(channel)["data"]


def test_save_reloads_the_row_and_runs_on_save(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory(text="stored")
    receive = listen(message.room.stream)
    message.text = "not saved"  # the worker renders what the database holds
    result = worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert result == {"frames": 1, "streams": 1, "changes": 1}
    assert '<p class="message-text">stored</p>' in receive()


def test_update_replaces(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory()
    receive = listen(message.room.stream)
    worker.broadcast_change("testapp.message", message.pk, "save", False)
    assert receive().startswith(f'<turbo-stream action="replace" target="message-{message.pk}">')


def test_delete_rebuilds_the_row_from_its_snapshot(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory()
        values = snapshot(message)
        pk = message.pk
        message.delete()
    receive = listen(Room.stream(values["room_id"]))
    assert worker.broadcast_change("testapp.message", pk, "delete", snapshot=values) == {"frames": 1, "streams": 1, "changes": 1}
    assert receive() == f'<turbo-stream action="remove" target="message-{pk}"><template></template></turbo-stream>'


def test_uuid_primary_key_from_json(group_sends: list[Any]) -> None:
    with turbo.suppress():
        document = DocumentFactory(title="T")
    receive = listen(document.stream)
    worker.broadcast_change("testapp.document", str(document.pk), "save", False)
    assert receive() == f'<turbo-stream action="update" target="document-{document.pk}"><template>T</template></turbo-stream>'


def test_string_primary_key(group_sends: list[Any]) -> None:
    with turbo.suppress():
        tag = TagFactory(slug="news", label="News")
    receive = listen(TagListStream())
    worker.broadcast_change("testapp.tag", "news", "save", True)
    assert receive() == '<turbo-stream action="append" target="tags"><template><li id="tag-news">News</li></template></turbo-stream>'
    assert tag.pk == "news"


def test_a_row_gone_before_the_worker_is_skipped_quietly(caplog: pytest.LogCaptureFixture, group_sends: list[Any]) -> None:
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        result = worker.broadcast_change("testapp.message", 999999, "save", True)
    assert result == {"frames": 0, "streams": 0, "changes": 1, "skipped": "row is gone"}
    assert group_sends == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "testapp.message pk=999999 is gone; nothing to broadcast" in caplog.text


@pytest.mark.database  # a cascade
def test_cascade_deleted_parent_in_on_delete_is_logged_at_info(
    caplog: pytest.LogCaptureFixture, group_sends: list[Any]
) -> None:
    with turbo.suppress():
        message = MessageFactory()
        values, pk = snapshot(message), message.pk
        message.room.delete()  # cascades: the message is gone, and so is its room
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        result = worker.broadcast_change("testapp.message", pk, "delete", snapshot=values)
    assert result["frames"] == 0
    assert "Room matching query does not exist" in result["skipped"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert f"testapp.message pk={pk} delete skipped: Room matching query does not exist" in caplog.text
    assert group_sends == []


def test_unregistered_labels_are_refused() -> None:
    with pytest.raises(UnknownStream, match="No ModelStream is registered for the model label 'auth.user'; refusing it."):
        worker.broadcast_change("auth.user", 1, "save", True)


def test_labels_are_never_imported() -> None:
    with pytest.raises(UnknownStream):
        worker.broadcast_change("os.system", 1, "save", True)


def test_invalid_pk_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="testapp.message: 'abc' is not a valid primary key"):
        worker.broadcast_change("testapp.message", "abc", "save", True)


def test_unknown_event_is_a_clear_error() -> None:
    with turbo.suppress():
        message = MessageFactory()
    with pytest.raises(ValueError, match="Unknown broadcast event 'explode'; expected 'save' or 'delete'."):
        worker.broadcast_change("testapp.message", message.pk, "explode")


def test_delete_without_snapshot_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="a delete needs the row's snapshot"):
        worker.broadcast_change("testapp.message", 1, "delete")


def test_frames_of_one_stream_go_out_in_one_group_send(
    monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]
) -> None:
    with turbo.suppress():
        message = MessageFactory()
        other_room = RoomFactory()
    stream_class = type(message.stream)

    def on_save(self: Any, instance: Any, created: bool, **kwargs: Any) -> None:
        instance.room.stream.append(text="one", id="a")
        instance.room.stream.append(text="two", id="a")
        other_room.stream.remove(id="b")

    monkeypatch.setattr(stream_class, "on_save", on_save)
    result = worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert result == {"frames": 3, "streams": 2, "changes": 1}
    assert [group for group, _ in group_sends] == [
        message.room.stream.broadcastable_stream_name,
        other_room.stream.broadcastable_stream_name,
    ]
    assert group_sends[0][1]["data"] == (
        '<turbo-stream action="append" target="a"><template>one</template></turbo-stream>'
        '<turbo-stream action="append" target="a"><template>two</template></turbo-stream>'
    )


def test_hook_exceptions_propagate_and_send_nothing(monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory()

    def on_save(self: Any, instance: Any, created: bool, **kwargs: Any) -> None:
        instance.room.stream.append(text="half", id="a")
        raise KeyError("bug in the hook")

    monkeypatch.setattr(type(message.stream), "on_save", on_save)
    with pytest.raises(KeyError, match="bug in the hook"):
        worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert group_sends == []


def test_eager_pipeline_end_to_end(group_sends: list[Any], django_capture_on_commit_callbacks: Any) -> None:
    """Celery eager mode (tests/settings.py): save → on_commit → task → frame, in-process."""
    with turbo.suppress():
        room = RoomFactory()
    receive = listen(room.stream)
    with django_capture_on_commit_callbacks(execute=True):
        MessageFactory(room=room, text="eager")
    assert "eager" in receive()


def _during_first_send(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Make ``action`` happen (as another worker's transaction would) while the first batch of
    frames is being sent, after the task read the row."""
    original = delivery.deliver
    calls = {"n": 0}

    def deliver(outgoing: delivery.Outgoing) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            with turbo.suppress():
                action()
        original(outgoing)

    monkeypatch.setattr(delivery, "deliver", deliver)


def test_a_row_deleted_while_broadcast_is_removed_again(monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]) -> None:
    """Concurrent workers: the delete's remove may have gone out before this task's append."""
    with turbo.suppress():
        message = MessageFactory()
    receive = listen(message.room.stream)
    _during_first_send(monkeypatch, lambda: type(message).objects.filter(pk=message.pk).delete())
    result = worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert receive().startswith('<turbo-stream action="append" target="messages">')
    assert receive() == f'<turbo-stream action="remove" target="message-{message.pk}"><template></template></turbo-stream>'
    assert result == {"frames": 2, "streams": 1, "changes": 1}


def test_a_row_changed_while_broadcast_is_sent_again(monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]) -> None:
    """Concurrent workers: an older render may arrive after a newer one; the last word is fresh."""
    with turbo.suppress():
        message = MessageFactory(text="old")
    receive = listen(message.room.stream)
    _during_first_send(monkeypatch, lambda: type(message).objects.filter(pk=message.pk).update(text="new"))
    worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert '<p class="message-text">old</p>' in receive()
    again = receive()
    assert again.startswith(f'<turbo-stream action="replace" target="message-{message.pk}">')
    assert '<p class="message-text">new</p>' in again


def test_an_unchanged_row_is_sent_once(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory()
    assert worker.broadcast_change("testapp.message", message.pk, "save", True) == {"frames": 1, "streams": 1, "changes": 1}
    assert len(group_sends) == 1


def test_a_recheck_that_is_skipped_keeps_the_first_pass_counts(
    monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]
) -> None:
    """The row changed while broadcast, and on the second pass the hook finds a related row gone:
    the result still counts the frame the first pass sent, and says why the second stopped."""
    with turbo.suppress():
        message = MessageFactory(text="old")
    original = MessageStream.on_save
    calls: list[int] = []

    def on_save(self: Any, instance: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Room.DoesNotExist("the room went away")
        original(self, instance, created, *args, **kwargs)

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    _during_first_send(monkeypatch, lambda: type(message).objects.filter(pk=message.pk).update(text="new"))
    result = worker.broadcast_change("testapp.message", message.pk, "save", True)
    assert result == {"frames": 1, "streams": 1, "changes": 1, "skipped": "the room went away"}
    assert len(calls) == 2


class StalledLayer:
    """A channel layer whose ``group_send`` never finishes (a Redis that stopped answering)."""

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(60)


def test_a_group_send_that_times_out_is_a_delivery_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """So the task retries it with backoff instead of failing as if the hook were wrong."""
    monkeypatch.setattr(delivery, "channel_layer", StalledLayer)
    with delivery.collect() as outgoing:
        delivery.send("turbo_async.group", "testapp:RoomStream", "<turbo-stream></turbo-stream>")
    with override_settings(TURBO_ASYNC={"DELIVERY_TIMEOUT": 0.05}), pytest.raises(DeliveryError):
        worker._deliver(outgoing)


class FakeTask:
    """What ``worker.retry`` reads of a bound Celery task: the retry count, the keyword arguments
    of this run, and ``retry()``."""

    def __init__(self, retries: int, **kwargs: Any) -> None:
        self.request = type("Request", (), {"retries": retries, "kwargs": kwargs})()
        self.retried: list[dict[str, Any]] = []

    def retry(self, **kwargs: Any) -> Exception:
        self.retried.append(kwargs)
        return RuntimeError("Celery's Retry")  # Celery's task.retry() raises it; raise it here


def test_retry_raises_the_retry_and_carries_the_time_of_the_first_failure() -> None:
    task = FakeTask(retries=0, request_id="r1")
    before = time.time()
    with pytest.raises(RuntimeError, match="Celery's Retry"):
        worker.retry(task, DeliveryError("layer down"), "testapp.message pk=1 (save)")  # type: ignore[arg-type]
    retried = task.retried[0]
    assert 0.5 <= retried["countdown"] <= 1.0
    assert retried["kwargs"]["request_id"] == "r1" and before <= retried["kwargs"]["failing_since"] <= time.time()
    assert "stale" not in retried["kwargs"]


def test_retries_go_on_while_the_first_failure_is_younger_than_the_max_age() -> None:
    since = time.time() - 100
    task = FakeTask(retries=30, failing_since=since)
    with override_settings(TURBO_ASYNC={"DELIVERY_MAX_AGE": 120, "DELIVERY_RETRY_BACKOFF_MAX": 5}):
        with pytest.raises(RuntimeError, match="Celery's Retry"):
            worker.retry(task, DeliveryError("down", {"g": "testapp:RoomStream"}), "x")  # type: ignore[arg-type]
    assert task.retried[0]["kwargs"]["failing_since"] == since  # the first failure's, kept
    assert 2.5 <= task.retried[0]["countdown"] <= 5.0 and "stale" not in task.retried[0]["kwargs"]


def test_past_the_max_age_the_frames_are_given_up_and_the_streams_marked_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = FakeTask(retries=7, failing_since=time.time() - 121)
    error = DeliveryError("layer down", {"testapp.Room-1": "testapp:RoomStream"})
    with caplog.at_level(logging.ERROR, logger="turbo_async"), pytest.raises(RuntimeError, match="Retry"):
        worker.retry(task, error, "testapp.message pk=1 (save)")  # type: ignore[arg-type]
    assert task.retried[0]["kwargs"]["stale"] == [["testapp.Room-1", "testapp:RoomStream"]]
    assert "gave up on the frames of testapp.message pk=1 (save) after 7 retries" in caplog.text
    assert "the pages of testapp:RoomStream refresh as soon as the layer answers" in caplog.text


def test_delivery_max_retries_still_bounds_the_wait_when_set(caplog: pytest.LogCaptureFixture) -> None:
    task = FakeTask(retries=3, failing_since=time.time() - 1)
    with override_settings(TURBO_ASYNC={"DELIVERY_MAX_RETRIES": 3}), pytest.raises(RuntimeError, match="Retry"):
        worker.retry(task, DeliveryError("down", {"g": "s:S"}), "x")  # type: ignore[arg-type]
    assert task.retried[0]["kwargs"]["stale"] == [["g", "s:S"]]


def test_a_broadcast_without_streams_gives_up_with_the_delivery_error_and_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = FakeTask(retries=9, failing_since=time.time() - 500)
    error = DeliveryError("layer down")
    with caplog.at_level(logging.ERROR, logger="turbo_async"), pytest.raises(DeliveryError) as raised:
        worker.retry(task, error, "testapp.message pk=1 (save)")  # type: ignore[arg-type]
    assert raised.value is error and task.retried == []
    assert "gave up on testapp.message pk=1 (save) after 9 retries" in caplog.text


def test_a_stale_refresh_is_retried_until_the_layer_answers() -> None:
    task = FakeTask(retries=40, failing_since=time.time() - 3600, stale=[["g", "s:S"]])
    with pytest.raises(RuntimeError, match="Retry"):
        worker.retry(task, DeliveryError("down", {"g": "s:S"}), "x")  # type: ignore[arg-type]
    assert task.retried[0]["kwargs"]["stale"] == [["g", "s:S"]]


def test_refresh_stale_sends_a_refresh_frame_to_each_stream(group_sends: list[Any]) -> None:
    """In-memory layer (group_sends): without offsets, the refresh frame alone."""
    result = worker.refresh_stale([["testapp.Room-1", "testapp:RoomStream"]], time.time() - 130)
    assert result == {"frames": 1, "streams": 1, "refreshed": 1}
    assert group_sends[0][0] == "testapp.Room-1"
    assert '<turbo-stream action="refresh"' in group_sends[0][1]["data"]


# -- batches ----------------------------------------------------------------------------------


def item(message: Any, event: str = "save", created: bool = True) -> dict[str, Any]:
    change = changes.Change.delete(message) if event == "delete" else changes.Change.save(message, created)
    return change.to_payload()


def test_a_batch_sends_one_group_send_per_stream_in_commit_order(group_sends: list[Any]) -> None:
    with turbo.suppress():
        room, other = RoomFactory(), RoomFactory()
        first, second = MessageFactory(room=room, text="one"), MessageFactory(room=room, text="two")
        elsewhere = MessageFactory(room=other, text="three")
        gone = MessageFactory(room=room)
        gone_item = item(gone, "delete")
        gone.delete()
    result = worker.broadcast([item(first), item(elsewhere), item(second), gone_item])
    assert result == {"frames": 4, "streams": 2, "changes": 4}
    by_group = {group: message["data"] for group, message in group_sends}
    assert len(group_sends) == 2  # one per stream for the whole batch
    markup = by_group[room.stream.broadcastable_stream_name]
    assert markup.index("one") < markup.index("two") < markup.index(f'action="remove" target="message-{gone_item["pk"]}"')
    assert "three" in by_group[other.stream.broadcastable_stream_name]


def test_a_batch_loads_each_models_rows_with_one_query(group_sends: list[Any]) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with turbo.suppress():
        room = RoomFactory()
        messages_ = [MessageFactory(room=room) for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        worker.broadcast([item(m) for m in messages_])
    table = Message._meta.db_table
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT") and f'FROM "{table}"' in q["sql"]]
    assert len(reads) == 2, reads  # the load, and the re-check after sending


def test_a_failing_hook_fails_the_batch_after_the_others_frames_went_out(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory(text="delivered")
        probe = ProbeFactory(fail=True)
    probe_item = changes.Change.save(probe, True).to_payload()
    with pytest.raises(worker.BatchHookError, match=rf"1 of 2 broadcasts of this batch failed .*testapp.probe pk={probe.pk} \(save\): RuntimeError"):
        worker.broadcast([probe_item, item(message)])
    assert [message_["data"] for _, message_ in group_sends] and "delivered" in group_sends[0][1]["data"]


def test_a_failing_hook_shows_as_a_failed_batch_task_in_celery(group_sends: list[Any]) -> None:
    """Eager Celery (tests/settings.py): the task's state is what Flower shows."""
    from turbo_async import tasks

    with turbo.suppress():
        probe, message = ProbeFactory(fail=True), MessageFactory()
    result = tasks.broadcast.apply(([changes.Change.save(probe, True).to_payload(), item(message)],), throw=False)
    assert result.state == "FAILURE" and isinstance(result.result, worker.BatchHookError)


def test_a_lone_change_whose_hook_raises_fails_its_task_with_that_exception(group_sends: list[Any]) -> None:
    """Eager Celery: a single change is a batch of one, and Flower shows the hook's own error."""
    from turbo_async import tasks

    with turbo.suppress():
        probe = ProbeFactory(fail=True)
    result = tasks.broadcast.apply(([changes.Change.save(probe, True).to_payload()],), throw=False)
    assert result.state == "FAILURE" and type(result.result) is RuntimeError


def test_a_batch_runs_later_actions_and_skips_rows_that_are_gone(group_sends: list[Any]) -> None:
    with turbo.suppress():
        room = RoomFactory()
        gone = MessageFactory(room=room)
        gone_item = item(gone)
        gone.delete()
    action = changes.StreamAction(room.stream.stream_name, [room.pk], {}, "update", {"text": "hi", "id": "greeting"})
    result = worker.broadcast([gone_item, action.to_payload()])
    assert result == {"frames": 1, "streams": 1, "changes": 2, "skipped": "row is gone"}
    assert group_sends[0][1]["data"] == '<turbo-stream action="update" target="greeting"><template>hi</template></turbo-stream>'


def test_an_item_that_cannot_be_read_fails_alone_after_the_others_went_out(
    group_sends: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with turbo.suppress():
        message = MessageFactory(text="delivered")
    unreadable = {"v": 3, "label": "testapp.message", "pk": message.pk, "event": "save"}
    with pytest.raises(worker.BatchHookError, match=r"1 of 2 broadcasts of this batch failed .*wire format version 3"):
        worker.broadcast([unreadable, item(message)])
    assert "delivered" in group_sends[0][1]["data"]


def test_a_lone_item_that_cannot_be_read_fails_with_what_is_wrong() -> None:
    with pytest.raises(changes.PayloadError, match="A broadcast item has no 'pk'"):
        worker.broadcast([{"v": 2, "label": "testapp.message", "event": "save"}])


def test_a_0_1_0_batch_item_is_broadcast(group_sends: list[Any]) -> None:
    """Items without ``"v"``, queued by 0.1.0 before an upgrade, are read until 0.3.0."""
    with turbo.suppress():
        message = MessageFactory(text="queued before the upgrade")
    result = worker.broadcast([{"label": "testapp.message", "pk": message.pk, "event": "save", "created": True}])
    assert result == {"frames": 1, "streams": 1, "changes": 1}
    assert "queued before the upgrade" in group_sends[0][1]["data"]


def test_a_hook_that_raises_in_a_batch_sends_nothing_of_its_own(
    monkeypatch: pytest.MonkeyPatch, group_sends: list[Any]
) -> None:
    with turbo.suppress():
        room = RoomFactory()
        first, second = MessageFactory(room=room, text="first"), MessageFactory(room=room, text="second")
    original = MessageStream.on_save

    def on_save(self: Any, instance: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        original(self, instance, created, *args, **kwargs)
        if instance.pk == first.pk:
            raise KeyError("after its frame")

    monkeypatch.setattr(MessageStream, "on_save", on_save)
    with pytest.raises(worker.BatchHookError):
        worker.broadcast([item(first), item(second)])
    [(_, sent)] = group_sends
    assert "second" in sent["data"] and "first" not in sent["data"]
