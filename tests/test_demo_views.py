"""The demo chat's views, through Django's test client.

Broadcasts run here with Celery in eager mode and Channels' in-memory layer (tests/settings.py):
a test listens on a stream's group and reads the frame that the view's commit produced. The
browser tests (tests/e2e/) drive the same views against the real worker, Redis and uvicorn.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse

import turbo_async as turbo
from demo.chat import views
from demo.chat.broadcasts import RoomListStream
from demo.chat.forms import EDIT_MAX_ROWS, edit_rows
from demo.chat.models import ANONYMOUS, Message, Room
from tests.factories import MessageFactory, RoomFactory
from turbo_async import names

pytestmark = pytest.mark.django_db

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]
FRAME = {"Turbo-Frame": "new-message"}


class Listener:
    """A channel in the in-memory layer, added to one stream's group."""

    def __init__(self, stream: turbo.Stream) -> None:
        self.layer = get_channel_layer()
        self.channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(stream.broadcastable_stream_name, self.channel)

    def frames(self) -> str:
        async def receive() -> dict[str, Any]:
            return await asyncio.wait_for(self.layer.receive(self.channel), 5)

        return str(async_to_sync(receive)()["data"])


@pytest.fixture
def committed(django_capture_on_commit_callbacks: CaptureCallbacks) -> Callable[[], AbstractContextManager[Any]]:
    """``with committed():`` runs the block's on_commit callbacks (the eager broadcasts) at its end:
    the test database wraps each test in a transaction that never commits."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


# Room list


def test_room_list_shows_the_rooms_and_subscribes_to_the_room_list_stream(client: Client) -> None:
    RoomFactory(name="General")
    response = client.get(reverse("chat:room_list"))
    html = response.content.decode()
    assert response.status_code == 200
    assert '<ul id="rooms"' in html
    assert "General" in html
    assert subscriptions(html) == [(RoomListStream.stream_name, [], {})]


def test_room_list_loads_turbo_and_the_demo_assets(client: Client) -> None:
    html = client.get(reverse("chat:room_list")).content.decode()
    assert "/static/turbo_async/js/turbo.es2017-umd.js" in html
    assert "/static/turbo_async/js/turbo-async.js" in html
    assert "/static/chat/chat.css" in html
    assert "/static/chat/chat.js" in html
    assert "https://" not in html  # works offline: no CDN


def test_creating_a_room_in_the_frame_answers_with_an_empty_form(client: Client) -> None:
    response = client.post(reverse("chat:room_create"), {"name": "Random"}, headers={"Turbo-Frame": "new-room"})
    assert response.status_code == 303
    assert response["Location"] == reverse("chat:room_create")
    assert Room.objects.get().name == "Random"
    form = client.get(response["Location"]).content.decode()
    assert '<turbo-frame id="new-room">' in form
    assert 'value="Random"' not in form


def test_a_created_room_is_broadcast_to_every_room_list(client: Client, committed: Callable[[], AbstractContextManager[Any]]) -> None:
    listener = Listener(RoomListStream())
    with committed():
        client.post(reverse("chat:room_create"), {"name": "Random"}, headers={"Turbo-Frame": "new-room"})
    room = Room.objects.get()
    frames = listener.frames()
    assert frames.startswith('<turbo-stream action="append" target="rooms"><template>')
    assert f'<li id="room-{room.pk}" class="room-item">' in frames


def test_creating_a_room_without_javascript_opens_it(client: Client) -> None:
    response = client.post(reverse("chat:room_create"), {"name": "Random"})
    assert response.status_code == 303
    assert response["Location"] == Room.objects.get().get_absolute_url()


def test_a_room_without_a_name_is_refused(client: Client) -> None:
    response = client.post(reverse("chat:room_create"), {"name": "  "}, headers={"Turbo-Frame": "new-room"})
    assert response.status_code == 422
    assert "Give the room a name." in response.content.decode()
    assert not Room.objects.exists()


# Room page


def test_room_page_shows_its_own_messages_and_subscribes_to_the_room(client: Client) -> None:
    room = RoomFactory()
    mine = MessageFactory(room=room, text="in this room")
    MessageFactory(text="in another room")
    response = client.get(reverse("chat:room", args=[room.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert f'<div id="message-{mine.pk}" class="message">' in html
    assert "in another room" not in html
    assert subscriptions(html) == [("chat:RoomStream", [room.pk], {})]
    assert '<turbo-frame id="new-message">' in html


def test_room_page_shows_the_newest_messages_oldest_first(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "RECENT_MESSAGES", 2)
    room = RoomFactory()
    for text in ("first", "second", "third"):
        MessageFactory(room=room, text=text)
    html = client.get(reverse("chat:room", args=[room.pk])).content.decode()
    assert "first" not in html
    assert html.index("second") < html.index("third")


def test_unknown_room_is_not_found(client: Client) -> None:
    assert client.get(reverse("chat:room", args=[404])).status_code == 404


# Messages


def test_sending_a_message_in_the_frame_answers_with_an_empty_form(client: Client) -> None:
    room = RoomFactory()
    url = reverse("chat:message_create", args=[room.pk])
    response = client.post(url, {"text": "Hello"}, headers=FRAME)
    assert response.status_code == 303
    assert response["Location"] == url
    assert Message.objects.get().text == "Hello"
    form = client.get(url, headers=FRAME).content.decode()
    assert '<turbo-frame id="new-message">' in form
    assert 'value="Hello"' not in form


def test_a_sent_message_reaches_the_room_through_its_stream(client: Client, committed: Callable[[], AbstractContextManager[Any]]) -> None:
    room = RoomFactory()
    listener = Listener(room.stream)
    with committed():
        client.post(reverse("chat:message_create", args=[room.pk]), {"text": "Hello <b>"}, headers=FRAME)
    message = Message.objects.get()
    frames = listener.frames()
    assert frames.startswith('<turbo-stream action="append" target="messages"><template>')
    assert f'<div id="message-{message.pk}" class="message">' in frames
    assert "Hello &lt;b&gt;" in frames


def test_a_message_is_sent_under_the_name_typed_in_the_composer(client: Client) -> None:
    room = RoomFactory()
    client.post(reverse("chat:message_create", args=[room.pk]), {"author": " Ada ", "text": "Hi"}, headers=FRAME)
    assert Message.objects.get().author == "Ada"


def test_the_session_remembers_the_name_for_the_next_message(client: Client) -> None:
    room = RoomFactory()
    url = reverse("chat:message_create", args=[room.pk])
    client.post(url, {"author": "Ada", "text": "Hi"}, headers=FRAME)
    composer = client.get(url, headers=FRAME).content.decode()  # where the frame's redirect leads
    assert 'name="author" value="Ada"' in composer
    page = client.get(reverse("chat:room", args=[room.pk])).content.decode()
    assert 'name="author" value="Ada"' in page
    other_visitor = Client().get(url, headers=FRAME).content.decode()
    assert 'value="Ada"' not in other_visitor


def test_a_message_without_a_name_is_anonymous(client: Client) -> None:
    room = RoomFactory()
    url = reverse("chat:message_create", args=[room.pk])
    client.post(url, {"author": "  ", "text": "Hi"}, headers=FRAME)
    assert Message.objects.get().author == ANONYMOUS
    composer = client.get(url, headers=FRAME).content.decode()
    assert 'placeholder="Your name"' in composer
    assert f'value="{ANONYMOUS}"' not in composer  # an empty field, not a name to erase first


def test_a_too_long_name_is_refused(client: Client) -> None:
    room = RoomFactory()
    url = reverse("chat:message_create", args=[room.pk])
    response = client.post(url, {"author": "x" * 41, "text": "Hi"}, headers=FRAME)
    assert response.status_code == 422
    assert "at most 40 characters" in response.content.decode()
    assert not Message.objects.exists()


def test_sending_without_javascript_goes_back_to_the_room(client: Client) -> None:
    room = RoomFactory()
    response = client.post(reverse("chat:message_create", args=[room.pk]), {"text": "Hello"})
    assert response.status_code == 303
    assert response["Location"] == room.get_absolute_url()


def test_an_empty_message_is_refused(client: Client) -> None:
    room = RoomFactory()
    response = client.post(reverse("chat:message_create", args=[room.pk]), {"text": " "}, headers=FRAME)
    assert response.status_code == 422
    assert "Type something first." in response.content.decode()
    assert not Message.objects.exists()


def test_a_message_shows_its_author(client: Client) -> None:
    message = MessageFactory(author="Ada <3")
    html = client.get(reverse("chat:room", args=[message.room.pk])).content.decode()
    assert '<p class="message-author">Ada &lt;3</p>' in html


def test_delete_asks_before_it_posts(client: Client) -> None:
    """Turbo shows data-turbo-confirm's question and submits only if the reader agrees."""
    message = MessageFactory(author="Ada")
    html = client.get(reverse("chat:message", args=[message.pk])).content.decode()
    form = re.search(r'<form class="message-delete"[^>]*>', html)
    assert form is not None
    assert 'data-turbo-confirm="Delete this message from Ada?"' in form[0]


def test_a_message_carries_the_ids_that_its_stream_and_frames_target(client: Client) -> None:
    message = MessageFactory()
    html = client.get(reverse("chat:message", args=[message.pk])).content.decode()
    assert f'<div id="message-{message.pk}" class="message">' in html
    assert f'<turbo-frame id="message-{message.pk}-edit"' in html
    assert f'href="{reverse("chat:message_edit", args=[message.pk])}"' in html
    assert f'action="{reverse("chat:message_delete", args=[message.pk])}"' in html


def test_edit_form_is_prefilled_in_the_message_frame(client: Client) -> None:
    message = MessageFactory(text="typo")
    html = client.get(reverse("chat:message_edit", args=[message.pk])).content.decode()
    assert f'<turbo-frame id="message-{message.pk}-edit"' in html
    assert re.search(rf'<textarea [^>]*id="message-{message.pk}-text"[^>]*>\ntypo</textarea>', html), html


def test_edit_field_is_as_tall_as_the_message(client: Client) -> None:
    message = MessageFactory(text="first line\nsecond line\n" + "x" * 100)
    html = client.get(reverse("chat:message_edit", args=[message.pk])).content.decode()
    field = re.search(r"<textarea [^>]*>", html)
    assert field is not None
    assert 'rows="4"' in field[0]  # two short lines and one that wraps once
    assert 'class="edit-text"' in field[0]


@pytest.mark.parametrize(
    ("text", "rows"),
    [("", 1), ("hi", 1), ("a\nb\nc", 3), ("x" * 60, 1), ("x" * 61, 2), ("line\n" * 40, EDIT_MAX_ROWS)],
)
def test_edit_rows_counts_lines_and_wrapping(text: str, rows: int) -> None:
    assert edit_rows(text) == rows


def test_an_edit_keeps_the_author(client: Client) -> None:
    message = MessageFactory(author="Ada", text="typo")
    client.post(reverse("chat:message_edit", args=[message.pk]), {"text": "fixed", "author": "Mallory"})
    message.refresh_from_db()
    assert (message.author, message.text) == ("Ada", "fixed")


def test_saving_an_edit_in_the_frame_shows_the_message_again(client: Client) -> None:
    message = MessageFactory(text="typo")
    frame = {"Turbo-Frame": f"message-{message.pk}-edit"}
    response = client.post(reverse("chat:message_edit", args=[message.pk]), {"text": "fixed"}, headers=frame)
    assert response.status_code == 303
    assert response["Location"] == reverse("chat:message", args=[message.pk])
    message.refresh_from_db()
    assert message.text == "fixed"


def test_an_edit_replaces_the_message_through_the_stream(client: Client, committed: Callable[[], AbstractContextManager[Any]]) -> None:
    with turbo.suppress():  # else the test transaction's pending "created" would absorb the edit
        message = MessageFactory(text="typo")
    listener = Listener(message.room.stream)
    with committed():
        client.post(
            reverse("chat:message_edit", args=[message.pk]), {"text": "fixed"},
            headers={"Turbo-Frame": f"message-{message.pk}-edit"},
        )
    frames = listener.frames()
    assert frames.startswith(f'<turbo-stream action="replace" target="message-{message.pk}"><template>')
    assert '<p class="message-text">fixed</p>' in frames


def test_an_empty_edit_is_refused(client: Client) -> None:
    message = MessageFactory(text="keep me")
    response = client.post(reverse("chat:message_edit", args=[message.pk]), {"text": ""})
    assert response.status_code == 422
    message.refresh_from_db()
    assert message.text == "keep me"


def test_deleting_in_the_frame_answers_no_content_for_turbo_to_ignore(client: Client) -> None:
    message = MessageFactory()
    response = client.post(
        reverse("chat:message_delete", args=[message.pk]), headers={"Turbo-Frame": f"message-{message.pk}-edit"}
    )
    assert response.status_code == 204
    assert "Content-Type" not in response  # else Turbo would take the URL as the frame's src
    assert not Message.objects.exists()


def test_a_delete_removes_the_message_through_the_stream(client: Client, committed: Callable[[], AbstractContextManager[Any]]) -> None:
    with turbo.suppress():
        message = MessageFactory()
    message_id = message.pk
    listener = Listener(message.room.stream)
    with committed():
        client.post(
            reverse("chat:message_delete", args=[message_id]),
            headers={"Turbo-Frame": f"message-{message_id}-edit"},
        )
    assert listener.frames() == (
        f'<turbo-stream action="remove" target="message-{message_id}"><template></template></turbo-stream>'
    )


def test_deleting_without_javascript_goes_back_to_the_room(client: Client) -> None:
    message = MessageFactory()
    response = client.post(reverse("chat:message_delete", args=[message.pk]))
    assert response.status_code == 303
    assert response["Location"] == message.room.get_absolute_url()


def test_delete_needs_a_post(client: Client) -> None:
    message = MessageFactory()
    assert client.get(reverse("chat:message_delete", args=[message.pk])).status_code == 405
    assert Message.objects.exists()


# CSRF


def test_a_post_without_csrf_token_is_forbidden() -> None:
    room = RoomFactory()
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("chat:message_create", args=[room.pk]), {"text": "Hello"})
    assert response.status_code == 403
    assert not Message.objects.exists()


def test_the_csrf_header_that_chat_js_sends_is_accepted() -> None:
    """Worker-rendered forms (edit, delete) have no token field: chat.js sends the page's token."""
    message = MessageFactory()
    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("chat:room", args=[message.room.pk])).content.decode()
    token = page.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]
    response = client.post(
        reverse("chat:message_delete", args=[message.pk]),
        headers={"X-CSRFToken": token, "Turbo-Frame": f"message-{message.pk}-edit"},
    )
    assert response.status_code == 204


def subscriptions(html: str) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """The streams a page subscribes to. (Signed names carry a timestamp, so comparing them as
    strings fails across a second boundary: unsign them.)"""
    return [names.unsign(signed) for signed in re.findall(r'signed-channel-name="([^"]+)"', html)]
