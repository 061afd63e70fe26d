"""Stream and ModelStream: turbo-django's API. Broadcast tests use Channels' in-memory layer
(tests/settings.py) to read what an explicit action sends."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_init, post_save

import turbo_async as turbo
from demo.chat.broadcasts import RoomListStream
from demo.chat.models import Message, Room
from demo.chat.streams import MessageStream, RoomStream
from tests.factories import MessageFactory, RoomFactory
from tests.testapp.models import Plain
from turbo_async import names
from turbo_async.registry import StreamRegistry, UnknownStream, stream_registry


def listen(stream: turbo.Stream) -> tuple[Any, str]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(stream.broadcastable_stream_name, channel)
    return layer, channel


def receive(layer: Any, channel: str) -> dict[str, Any]:
    return async_to_sync(layer.receive)(channel)


def test_stream_name_is_app_label_and_class_name() -> None:
    assert RoomStream.stream_name == "chat:RoomStream"
    assert MessageStream.stream_name == "chat:MessageStream"
    assert RoomListStream.stream_name == "chat:RoomListStream"


def test_streams_py_is_autodiscovered() -> None:
    assert stream_registry.get_stream("chat:RoomStream") is RoomStream
    assert stream_registry.get_model_stream("chat.message") is MessageStream


def test_every_instance_has_its_stream(db: None) -> None:
    room = RoomFactory()
    assert isinstance(room.stream, RoomStream)
    assert room.stream.pk == room.pk
    assert room.stream.instance is room


def test_no_post_init_handler_is_connected() -> None:
    assert not post_init.has_listeners(Message)
    assert not post_init.has_listeners(Room)


def test_model_class_stream_is_the_stream_class() -> None:
    assert Room.stream is RoomStream


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
                model = "chat.Message"


def test_two_model_streams_for_one_model_name_both() -> None:
    class FirstPlainStream(turbo.ModelStream):  # type: ignore[type-arg]
        class Meta:
            model = Plain

    class SecondPlainStream(turbo.ModelStream):  # type: ignore[type-arg]
        class Meta:
            model = Plain

    registry = StreamRegistry()
    registry.register(FirstPlainStream)
    try:
        with pytest.raises(ImproperlyConfigured) as excinfo:
            registry.register(SecondPlainStream)
    finally:
        registry.unregister(FirstPlainStream)
    where = "tests.test_streams.test_two_model_streams_for_one_model_name_both.<locals>"
    assert str(excinfo.value) == (
        f"testapp.Plain has two ModelStreams: {where}.FirstPlainStream and "
        f"{where}.SecondPlainStream. A model can have only one ModelStream; merge them."
    )
    assert not hasattr(Plain, "stream")
    assert not post_save.has_listeners(Plain)


def test_unknown_stream_name_lists_registered_ones() -> None:
    with pytest.raises(UnknownStream, match="No stream is registered as 'chat:Nope'. Registered streams: .*chat:RoomStream"):
        stream_registry.get_stream("chat:Nope")


def test_unknown_model_label_is_refused() -> None:
    with pytest.raises(UnknownStream, match="No ModelStream is registered for the model label 'auth.user'"):
        stream_registry.get_model_stream("auth.user")


def test_signed_name_round_trips(db: None) -> None:
    room = RoomFactory()
    assert names.unsign(room.stream.signed_stream_name) == ("chat:RoomStream", [room.pk], {})


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
    assert message["stream"] == "chat:RoomStream"
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


def test_a_stream_outside_an_installed_app_is_named_as_in_turbo_django() -> None:
    """turbo-django names a stream that no installed app contains ``:Name``; so do we."""
    namespace: dict[str, Any] = {"__name__": "scripts.one_off", "turbo": turbo}
    exec("class AnnouncementStream(turbo.Stream):\n    pass\n", namespace)
    assert namespace["AnnouncementStream"].stream_name == ":AnnouncementStream"


def test_meta_app_name_still_wins() -> None:
    class NamedStream(turbo.Stream):
        class Meta:
            app_name = "news"

    assert NamedStream.stream_name == "news:NamedStream"
