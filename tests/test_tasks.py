"""``turbo_async.tasks``: one broadcast task for every change and action, and 0.1.0's tasks kept
for the messages an upgrade finds queued (until 0.3.0), all on the worker's one path.

Celery's eager mode (tests/settings.py) runs a task here as a worker would run it, with the
request Celery builds (retries, keyword arguments); frames go to Channels' in-memory layer, read
back with ``group_sends``. tests/integration/test_wire_compat.py does the same through a real
broker and worker.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import turbo_async as turbo
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import delivery, tasks
from turbo_async.changes import Change, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def group_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    original = delivery.group_send

    def record(group: str, message: dict[str, Any]) -> None:
        sent.append((group, message["data"]))
        original(group, message)

    monkeypatch.setattr(delivery, "group_send", record)
    return sent


def test_a_lone_change_is_a_batch_of_one(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory(text="one")
    result = tasks.broadcast.apply(([Change("testapp.message", message.pk, "save", True).to_payload()],)).get()
    assert result == {"frames": 1, "streams": 1, "changes": 1}
    assert [group for group, _ in group_sends] == [message.room.stream.broadcastable_stream_name]


def test_0_1_0_one_change_task_runs_on_the_same_path(group_sends: list[Any]) -> None:
    with turbo.suppress():
        message = MessageFactory(text="old")
        values, pk = snapshot(message), message.pk
        message.delete()
    result = tasks.broadcast_v1.apply(("testapp.message", pk, "delete", False), {"snapshot": values}).get()
    assert result == {"frames": 1, "streams": 1, "changes": 1}
    assert group_sends[0][1] == f'<turbo-stream action="remove" target="message-{pk}"><template></template></turbo-stream>'


def test_0_1_0_stream_action_task_runs_on_the_same_path(group_sends: list[Any]) -> None:
    room = RoomFactory()
    options = {"selector": None, "id": "greeting", "template": None, "context": None, "text": "hi"}
    result = tasks.stream_action_v1.apply((room.stream.stream_name, [room.pk], {}, "update", options)).get()
    assert result == {"frames": 1, "streams": 1, "changes": 1}
    assert group_sends == [(
        room.stream.broadcastable_stream_name,
        '<turbo-stream action="update" target="greeting"><template>hi</template></turbo-stream>',
    )]


@pytest.mark.parametrize("task", ["broadcast", "broadcast_v1"])
def test_a_retry_given_up_on_refreshes_the_stale_streams_whatever_the_task(group_sends: list[Any], task: str) -> None:
    """worker.retry adds ``failing_since`` and ``stale`` to the task's keyword arguments; every
    broadcast task takes them (a retry of a 0.1.0 message too)."""
    args = ([Change("testapp.message", 1, "save").to_payload()],) if task == "broadcast" else ("testapp.message", 1, "save")
    stale = {"stale": [["testapp.Room-1", "testapp:RoomStream"]], "failing_since": time.time() - 200}
    result = getattr(tasks, task).apply(args, stale).get()
    assert result == {"frames": 1, "streams": 1, "refreshed": 1}
    assert group_sends[0][0] == "testapp.Room-1" and 'action="refresh"' in group_sends[0][1]


def test_a_broadcast_is_named_in_log_lines_by_its_change_or_its_size() -> None:
    item = Change("testapp.message", 5, "save").to_payload()
    assert tasks._what([item]) == "testapp.message pk=5 (save)"
    assert tasks._what([item, item]) == "a batch of 2"
    assert tasks._what([{"v": 9}]) == "a batch of 1"
