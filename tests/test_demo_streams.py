"""The demo chat's streams, tested the way a user tests theirs: with ``turbo_async.testing``.

The capture runs each hook in the test's process when the transaction commits and records the
frames instead of sending them (no Celery, no channel layer involved).
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from demo.chat.broadcasts import RoomListStream
from demo.chat.models import Message
from tests.factories import MessageFactory, RoomFactory
from turbo_async.testing import BroadcastRecorder, assert_broadcasts, assert_no_broadcasts

pytestmark = pytest.mark.django_db


def test_new_message_is_appended_to_its_room() -> None:
    room = RoomFactory()
    with assert_broadcasts(room, count=1, action="append", target="messages") as frames:
        message = MessageFactory(room=room, text="Hello <b>world</b>")
    assert f'<div id="message-{message.pk}" class="message">' in frames[0].html
    assert "Hello &lt;b&gt;world&lt;/b&gt;" in frames[0].html


def test_the_appended_message_shows_its_author_and_asks_before_delete() -> None:
    """The worker renders the message (the seed's streams.py, unchanged) with the same template
    as the page: author and the delete confirmation come with it."""
    room = RoomFactory()
    with assert_broadcasts(room, count=1, action="append") as frames:
        MessageFactory(room=room, author="Ada")
    assert '<p class="message-author">Ada</p>' in frames[0].html
    assert 'data-turbo-confirm="Delete this message from Ada?"' in frames[0].html


def test_new_message_reaches_no_other_room() -> None:
    room, other = RoomFactory(), RoomFactory()
    with assert_no_broadcasts(other):
        MessageFactory(room=room)


def test_edited_message_is_replaced_in_place() -> None:
    message = MessageFactory(text="before")
    with assert_broadcasts(message.room, count=1, action="replace", target=f"message-{message.pk}") as frames:
        message.text = "after"
        message.save()
    assert '<p class="message-text">after</p>' in frames[0].html
    assert f'<p class="message-author">{message.author}</p>' in frames[0].html


def test_deleted_message_is_removed_using_its_room() -> None:
    message = MessageFactory()
    room, message_id = message.room, message.pk
    with assert_broadcasts(room, count=1, action="remove", target=f"message-{message_id}") as frames:
        message.delete()
    assert frames[0].html == ""


def test_message_created_and_edited_in_one_transaction_is_appended_once() -> None:
    room = RoomFactory()
    with assert_broadcasts(room, count=1, action="append", contains="final"):
        message = MessageFactory(room=room, text="draft")
        message.text = "final"
        message.save()


def test_saving_a_room_broadcasts_nothing() -> None:
    """RoomStream has no hooks: it is only a channel for its messages."""
    room = RoomFactory()
    with assert_no_broadcasts():
        room.name = "Renamed"
        room.save()


@pytest.mark.database  # a cascade
def test_deleting_a_room_broadcasts_nothing_for_its_messages() -> None:
    """The cascade deletes the room first: each message's on_delete finds no room and is skipped
    (logged at info), since the room's page is gone anyway."""
    room = RoomFactory()
    MessageFactory(room=room)
    with assert_no_broadcasts():
        room.delete()


def test_room_list_stream_adds_a_room_after_commit() -> None:
    room = RoomFactory(name="Lobby")
    with assert_broadcasts(RoomListStream(), count=1, action="append", target="rooms") as frames:
        RoomListStream().add(room)
    assert f'<li id="room-{room.pk}" class="room-item">' in frames[0].html


def test_posting_a_message_broadcasts_it(client: Client) -> None:
    room = RoomFactory()
    with assert_broadcasts(room, count=1, action="append", contains="from the form") as frames:
        response = client.post(
            reverse("chat:message_create", args=[room.pk]), {"author": "Grace", "text": "from the form"}
        )
    assert response.status_code == 303
    assert Message.objects.get().text == "from the form"
    assert '<p class="message-author">Grace</p>' in frames[0].html


def test_creating_a_room_adds_it_to_every_room_list(client: Client) -> None:
    with assert_broadcasts(RoomListStream, count=1, action="append", contains="Garden"):
        client.post(reverse("chat:room_create"), {"name": "Garden"})


def test_fixture_records_every_frame_of_the_test(
    turbo_broadcasts: BroadcastRecorder, django_capture_on_commit_callbacks: object
) -> None:
    room = RoomFactory()
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        message = MessageFactory(room=room)
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        message.delete()
    assert [frame.action for frame in turbo_broadcasts.frames if frame.group == room.stream.broadcastable_stream_name] == ["append", "remove"]
