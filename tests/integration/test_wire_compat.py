"""Messages and outbox rows in 0.1.0's wire format are broadcast by this version's workers.

0.1.0 sent one positional task per change (``turbo_async.broadcast``) or ``stream.later`` action
(``turbo_async.stream_action``), and batches of items without a version; this version sends one
``turbo_async.batch`` task of versioned items (turbo_async.changes). What an upgrade finds already
queued in the broker, or written in the database outbox, must still reach the pages, until 0.3.0.
Here the old messages are enqueued by hand on a real Redis broker, the old rows inserted by hand,
and a real Celery worker (its own queue, sweeping the outbox) broadcasts them to a real uvicorn;
a real WebSocket client reads the frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.conftest import LOG_DIR
from tests.services import CeleryWorker, RedisServer, Uvicorn, subscribed
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import suppress
from turbo_async.changes import snapshot
from turbo_async.models import OutboxEntry

pytestmark = pytest.mark.integration

QUEUE = "turbo-wire-compat"
SETTINGS = {
    "QUEUE": QUEUE, "OUTBOX": "database", "OUTBOX_SWEEP_AFTER": 1, "OUTBOX_SWEEP_INTERVAL": 1,
    "REFRESH_DEBOUNCE": 0.2, "REFRESH_MAX_WAIT": 1.0,
}


@pytest.fixture(scope="module")
def upgraded_worker(
    redis_server: RedisServer, django_db_setup: None, django_db_blocker: object
) -> Iterator[CeleryWorker]:
    """A worker of this version on its own queue (the session's worker takes none of these
    messages), sweeping the database outbox every second."""
    process = CeleryWorker(LOG_DIR, name="wire-compat", TURBO_TEST_TURBO_ASYNC=json.dumps(SETTINGS))
    process.args += ["-Q", QUEUE]
    process.start()
    yield process
    process.stop()


@pytest.fixture
def stack(live_broker: RedisServer, upgraded_worker: CeleryWorker, web: Uvicorn, transactional_db: None) -> Uvicorn:
    return web


def send_0_1_0(task: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> None:
    """Enqueue a message as a 0.1.0 web process did: the task by name, positional arguments."""
    from workers import app

    app.send_task(task, args=args, kwargs=kwargs or {}, queue=QUEUE)


def message_frame(message: Any, action: str) -> str:
    target = "messages" if action == "append" else f"message-{message.pk}"
    return f'<turbo-stream action="{action}" target="{target}">'


@pytest.mark.database
def test_0_1_0_tasks_queued_in_the_broker_are_broadcast(stack: Uvicorn) -> None:
    with suppress():
        room = RoomFactory()
        created, edited, deleted = (MessageFactory(room=room, text=text) for text in ("new", "edited", "gone"))
        values, deleted_pk = snapshot(deleted), deleted.pk
        deleted.delete()
    update = {"selector": None, "id": "greeting", "template": None, "context": None, "text": "hi"}
    with subscribed(stack, room.stream.signed_stream_name) as client:
        send_0_1_0("turbo_async.broadcast", ["testapp.message", created.pk, "save", True])
        frames = client.receive_frames()
        assert frames.startswith(message_frame(created, "append")) and '<p class="message-text">new</p>' in frames

        send_0_1_0("turbo_async.broadcast", ["testapp.message", deleted_pk, "delete", False], {"snapshot": values})
        assert client.receive_frames() == (
            f'<turbo-stream action="remove" target="message-{deleted_pk}"><template></template></turbo-stream>'
        )

        send_0_1_0("turbo_async.stream_action", [room.stream.stream_name, [room.pk], {}, "update", update])
        assert client.receive_frames() == (
            '<turbo-stream action="update" target="greeting"><template>hi</template></turbo-stream>'
        )

        # 0.1.0's batch: items without "v", a change and an action, one WebSocket message.
        send_0_1_0("turbo_async.batch", [[
            {"label": "testapp.message", "pk": edited.pk, "event": "save", "created": False},
            {"stream": room.stream.stream_name, "args": [room.pk], "kwargs": {}, "action": "update",
             "options": {**update, "text": "again"}},
        ]])
        frames = client.receive_frames()
        assert frames.startswith(message_frame(edited, "replace")) and '<p class="message-text">edited</p>' in frames
        assert frames.endswith(
            '<turbo-stream action="update" target="greeting"><template>again</template></turbo-stream>'
        )


@pytest.mark.database
def test_0_1_0_outbox_rows_are_swept_and_broadcast(stack: Uvicorn) -> None:
    """Rows a 0.1.0 process left in the outbox table (its task, positional args) are published
    by this version's sweep and broadcast; the refresh keeps the request id 0.1.0 kept among its
    options, and its delayed task goes out on the queue of the broadcasts."""
    with suppress():
        room = RoomFactory()
        message = MessageFactory(room=room, text="left behind")
    with subscribed(stack, room.stream.signed_stream_name) as client:
        rows = [
            OutboxEntry.objects.create(
                task="turbo_async.broadcast", args=["testapp.message", message.pk, "save", True],
                shadow="testapp.MessageStream.on_save",
            ),
            OutboxEntry.objects.create(
                task="turbo_async.stream_action",
                args=[room.stream.stream_name, [room.pk], {}, "refresh", {"selector": None, "id": None,
                                                                         "request_id": "req-0.1.0"}],
                shadow="testapp.RoomStream.refresh",
            ),
        ]
        OutboxEntry.objects.filter(pk__in=[row.pk for row in rows]).update(
            created_at=timezone.now() - timedelta(minutes=1)
        )
        frames = client.receive_frames(timeout=20)
        assert frames.startswith(message_frame(message, "append")) and "left behind" in frames
        assert client.receive_frames(timeout=20) == (
            '<turbo-stream action="refresh" request-id="req-0.1.0"></turbo-stream>'
        )
    assert not OutboxEntry.objects.exists()
