"""Stream and ModelStream: turbo-django's API. Broadcast tests use Channels' in-memory layer
(tests/settings.py) to read what an explicit action sends."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

import turbo_async as turbo
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Room
from tests.testapp.streams import MessageStream, RoomListStream, RoomStream
from turbo_async import names


def listen(stream: turbo.Stream) -> tuple[Any, str]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(stream.broadcastable_stream_name, channel)
    return layer, channel


def receive(layer: Any, channel: str) -> dict[str, Any]:
    return async_to_sync(layer.receive)(channel)


def test_stream_name_is_app_label_and_class_name() -> None:
    assert RoomStream.stream_name == "testapp:RoomStream"
    assert MessageStream.stream_name == "testapp:MessageStream"
    assert RoomListStream.stream_name == "testapp:RoomListStream"


def test_broadcasting_to_an_unsaved_instance_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Cannot broadcast to an unsaved Room: it has no primary key yet"):
        Room(name="x").stream.append(text="hi", id="x")


def test_model_stream_without_meta_model_is_a_clear_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="NoModelStream is a ModelStream without a model. Add 'class Meta: model = YourModel'"):

        class NoModelStream(turbo.ModelStream):  # type: ignore[type-arg]
            pass


def test_meta_model_must_be_a_model() -> None:
    with pytest.raises(ImproperlyConfigured, match="BadStream.Meta.model must be a Django model class"):

        class BadStream(turbo.ModelStream):  # type: ignore[type-arg]
            class Meta:
                model = "testapp.Message"


def test_signed_name_round_trips(db: None) -> None:
    room = RoomFactory()
    assert names.unsign(room.stream.signed_stream_name) == ("testapp:RoomStream", [room.pk], {})


def test_group_name_is_the_same_for_every_signature(db: None) -> None:
    room = RoomFactory()
    assert room.stream.broadcastable_stream_name == Room.stream(room.pk).broadcastable_stream_name
    assert room.stream.broadcastable_stream_name != RoomFactory().stream.broadcastable_stream_name
    assert len(room.stream.broadcastable_stream_name) < 100


def test_user_passes_test_allows_everyone_by_default() -> None:
    assert RoomListStream().user_passes_test(None) is True


def test_explicit_action_outside_a_worker_sends_now(db: None) -> None:
    room = RoomFactory()
    layer, channel = listen(room.stream)
    room.stream.append(text="now", id="messages")
    message = receive(layer, channel)
    assert message["type"] == "turbo.stream"
    assert message["stream"] == "testapp:RoomStream"
    assert message["data"] == '<turbo-stream action="append" target="messages"><template>now</template></turbo-stream>'


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
def test_every_action_sends_its_frame(db: None, action: str) -> None:
    room = RoomFactory()
    layer, channel = listen(room.stream)
    getattr(room.stream, action)("testapp/tag.html", {"tag": {"slug": "s", "label": "L"}}, selector=".t")
    assert receive(layer, channel)["data"] == (
        f'<turbo-stream action="{action}" targets=".t"><template><li id="tag-s">L</li></template></turbo-stream>'
    )


def test_remove_and_refresh_send_their_frames(db: None) -> None:
    room = RoomFactory()
    layer, channel = listen(room.stream)
    room.stream.remove(id="message-3")
    room.stream.refresh()
    assert receive(layer, channel)["data"] == '<turbo-stream action="remove" target="message-3"><template></template></turbo-stream>'
    assert receive(layer, channel)["data"] == '<turbo-stream action="refresh"></turbo-stream>'


def test_stream_raw_sends_markup_as_is(db: None) -> None:
    layer, channel = listen(RoomListStream())
    RoomListStream().stream_raw("<turbo-stream action=\"refresh\"></turbo-stream>")
    assert receive(layer, channel)["data"] == '<turbo-stream action="refresh"></turbo-stream>'


def test_action_without_template_or_text_is_a_clear_error(db: None) -> None:
    with pytest.raises(ValueError, match="Pass a template name or text= to render a frame."):
        RoomFactory().stream.append(id="x")


def test_streams_with_the_same_identity_are_equal(db: None) -> None:
    message = MessageFactory()
    assert message.room.stream == Room.stream(message.room_id)
    assert len({message.room.stream, Room.stream(message.room_id)}) == 1
