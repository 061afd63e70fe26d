"""The test app's chat streams end to end: real Redis, real worker process, real uvicorn, real
WebSocket client. Rows are committed (transactional_db) so the worker can reload them.

The tests marked ``database`` (a worker process reloading committed rows: created, edited, gone
but for the delete's snapshot, a UUID key) run again on PostgreSQL; the idle socket and the two
web processes are about Redis and uvicorn only."""

from __future__ import annotations

import datetime
import time

import pytest
from django.template.defaultfilters import date

from tests.services import Uvicorn, subscribed
from tests.testapp.factories import DocumentFactory, MessageFactory, RoomFactory
from turbo_async import suppress

pytestmark = pytest.mark.integration


@pytest.mark.database
def test_create_appends_the_message(live: Uvicorn) -> None:
    room = RoomFactory()
    with subscribed(live, room.stream.signed_stream_name) as client:
        message = MessageFactory(room=room, text="Hello <world>")
        frames = client.receive_frames()
    # A worker renders for every reader: times in UTC (a page's script would show them in the
    # reader's zone).
    pk, created = message.pk, message.created_at.astimezone(datetime.UTC)
    assert frames == (
        '<turbo-stream action="append" target="messages"><template>'
        f'<div id="message-{pk}" class="message">'
        '<p class="message-text">Hello &lt;world&gt;</p>'
        f'<time datetime="{date(created, "c")}">{date(created, "H:i")}</time>'
        "</div></template></turbo-stream>"
    )


@pytest.mark.database
def test_edit_replaces_the_message(live: Uvicorn) -> None:
    with suppress():  # set-up rows broadcast nothing, so only the edit reaches the client
        room = RoomFactory()
        message = MessageFactory(room=room, text="before")
    with subscribed(live, room.stream.signed_stream_name) as client:
        message.text = "after"
        message.save()
        frames = client.receive_frames()
    assert frames.startswith(f'<turbo-stream action="replace" target="message-{message.pk}">')
    assert '<p class="message-text">after</p>' in frames


@pytest.mark.database
def test_delete_removes_the_message_using_its_room(live: Uvicorn) -> None:
    with suppress():
        room = RoomFactory()
        message = MessageFactory(room=room)
    message_id = message.pk
    # on_delete reaches the room through message.room: only the snapshot's room_id makes that work.
    with subscribed(live, room.stream.signed_stream_name) as client:
        message.delete()
        frames = client.receive_frames()
    assert frames == (
        f'<turbo-stream action="remove" target="message-{message_id}"><template></template></turbo-stream>'
    )


@pytest.mark.database
def test_uuid_primary_key(live: Uvicorn) -> None:
    with suppress():
        document = DocumentFactory(title="First")
    with subscribed(live, document.stream.signed_stream_name) as client:
        document.title = "Second"
        document.save()
        frames = client.receive_frames()
    assert frames == (
        f'<turbo-stream action="update" target="document-{document.pk}"><template>Second</template></turbo-stream>'
    )


@pytest.mark.layer  # the core layer blocks on reads: redis-py's 5 s socket_timeout would cut it
def test_idle_socket_still_receives_after_12_seconds(live: Uvicorn) -> None:
    room = RoomFactory()
    with subscribed(live, room.stream.signed_stream_name) as client:
        time.sleep(12)  # redis-py's default socket_timeout=5 would have dropped the reader by now
        MessageFactory(room=room, text="still here")
        assert "still here" in client.receive_frames()


def test_two_web_processes_both_receive(live: Uvicorn, redis_server: object) -> None:
    from tests.conftest import LOG_DIR

    second = Uvicorn(LOG_DIR, name="web-2")
    second.start()
    try:
        room = RoomFactory()
        with subscribed(live, room.stream.signed_stream_name) as a, subscribed(
            second, room.stream.signed_stream_name
        ) as b:
            MessageFactory(room=room, text="to both")
            assert "to both" in a.receive_frames()
            assert "to both" in b.receive_frames()
    finally:
        second.stop()
