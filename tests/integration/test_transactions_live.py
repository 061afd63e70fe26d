"""Broadcasts follow the transactions of their own database alias, proven with the real worker.

The session's worker reloads rows from the same alias as the saving process ("other" is a second
SQLite file, or a second PostgreSQL database with TURBO_TEST_DATABASE=postgres). A wrongly
published task would reach the client before the sentinel that each test commits last: one worker
process takes tasks in the order they were published.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.services import StreamClient, Uvicorn, subscribed
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Message, Room
from turbo_async import suppress

pytestmark = [
    pytest.mark.integration,
    pytest.mark.database,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]


class Rollback(Exception):
    pass


def room_on_other() -> Room:
    with suppress():
        room = RoomFactory.build()
        room.save(using="other")
    return room


def save_message(room: Room, text: str, using: str) -> Message:
    message = MessageFactory.build(room=room, text=text)
    message.save(using=using)
    return message


def assert_next_frame_is(client: StreamClient, message: Message) -> None:
    frames = client.receive_frames()
    assert f'id="message-{message.pk}"' in frames and message.text in frames, frames


def test_commit_on_other_alias_is_broadcast_from_that_database(live: Uvicorn) -> None:
    room = room_on_other()
    with subscribed(live, room.stream.signed_stream_name) as client:
        with transaction.atomic(using="other"):
            message = save_message(room, "stored in other", "other")
        assert_next_frame_is(client, message)
    assert not Message.objects.using("default").filter(text="stored in other").exists()


def test_rollback_on_other_alias_broadcasts_nothing(live: Uvicorn) -> None:
    room = room_on_other()
    with suppress():
        existing = save_message(room, "existing", "other")
    with subscribed(live, room.stream.signed_stream_name) as client:
        with pytest.raises(Rollback), transaction.atomic(using="other"):
            # An edit of an existing row: a wrongly published task would find it and replace it.
            existing.text = "rolled back"
            existing.save(using="other")
            raise Rollback
        sentinel = save_message(room, "sentinel", "other")
        assert_next_frame_is(client, sentinel)


def test_rollback_on_default_keeps_a_commit_on_other(live: Uvicorn) -> None:
    room = room_on_other()
    with suppress():
        default_room = RoomFactory()
        existing = save_message(default_room, "existing", "default")
    with subscribed(
        live, room.stream.signed_stream_name, default_room.stream.signed_stream_name
    ) as client:
        with pytest.raises(Rollback), transaction.atomic(using="default"):
            with transaction.atomic(using="other"):
                kept = save_message(room, "committed on other", "other")
            existing.text = "rolled back on default"
            existing.save(using="default")
            raise Rollback
        assert_next_frame_is(client, kept)
        sentinel = save_message(default_room, "sentinel", "default")
        assert_next_frame_is(client, sentinel)
