"""``turbo_async.codec``: the JSON codec of ``stream.later``'s context.

Model instances travel as references and are reloaded in the worker, ``mark_safe`` strings stay
safe, anything else must survive JSON and is refused in the caller when it cannot.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils.safestring import SafeData, mark_safe

import turbo_async as turbo
from tests.testapp.factories import DocumentFactory, MessageFactory, RoomFactory
from turbo_async import codec

pytestmark = pytest.mark.django_db


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def through_a_broker(value: Any) -> Any:
    """``value`` encoded, carried as JSON (all a broker carries), and decoded."""
    return codec.decode(json.loads(json.dumps(codec.encode(value))))


def listen(stream: turbo.Stream) -> Any:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(stream.broadcastable_stream_name, channel)
    return lambda: async_to_sync(layer.receive)(channel)["data"]


def test_a_model_instance_travels_as_a_reference() -> None:
    with turbo.suppress():
        message = MessageFactory()
    assert codec.encode(message) == {"__model__": "testapp.message", "pk": message.pk}


def test_a_reference_is_reloaded_from_the_database() -> None:
    with turbo.suppress():
        message = MessageFactory(text="stored")
    message.text = "not saved"  # the worker renders what the database holds
    reloaded = through_a_broker(message)
    assert (type(reloaded), reloaded.pk, reloaded.text) == (type(message), message.pk, "stored")


def test_a_uuid_primary_key_travels_as_a_string_and_comes_back() -> None:
    with turbo.suppress():
        document = DocumentFactory()
    assert codec.encode(document) == {"__model__": "testapp.document", "pk": str(document.pk)}
    assert through_a_broker(document) == document


def test_an_unsaved_instance_is_refused() -> None:
    with pytest.raises(ValueError) as excinfo:
        codec.encode(RoomFactory.build())
    assert str(excinfo.value) == "Cannot send an unsaved Room to a worker; save it first."


def test_a_safe_string_stays_safe() -> None:
    decoded = through_a_broker(mark_safe("<b>safe</b>"))
    assert decoded == "<b>safe</b>"
    assert isinstance(decoded, SafeData)


def test_a_plain_string_stays_plain() -> None:
    decoded = through_a_broker("<b>plain</b>")
    assert decoded == "<b>plain</b>"
    assert not isinstance(decoded, SafeData)


def test_nested_contexts_round_trip_and_tuples_become_lists() -> None:
    with turbo.suppress():
        room = RoomFactory()
    context = {"room": room, "items": (1, "two", [mark_safe("<i>3</i>")]), "extra": {"n": None, "ok": True}}
    decoded = through_a_broker(context)
    assert decoded == {"room": room, "items": [1, "two", ["<i>3</i>"]], "extra": {"n": None, "ok": True}}
    assert isinstance(decoded["items"][2][0], SafeData)


def test_dates_travel_as_django_serialises_them() -> None:
    assert codec.encode({"when": datetime.date(2026, 11, 27)}) == {"when": "2026-11-27"}


def test_dictionary_keys_become_strings() -> None:
    assert codec.encode({1: "one"}) == {"1": "one"}


def test_what_json_cannot_carry_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError) as excinfo:
        codec.encode({"x": Opaque()})
    assert str(excinfo.value) == (
        "stream.later cannot send Opaque <Opaque> to a worker: use model instances or "
        "JSON-serialisable values in the context."
    )


def test_later_refuses_what_json_cannot_carry() -> None:
    with turbo.suppress():
        room = RoomFactory()
    with pytest.raises(TypeError, match="stream.later cannot send object"):
        room.stream.later.update("testapp/message.html", {"x": object()}, id="x")


def test_later_keeps_safe_markup_safe(django_capture_on_commit_callbacks: Any) -> None:
    with turbo.suppress():
        room = RoomFactory()
    receive = listen(room.stream)
    with django_capture_on_commit_callbacks(execute=True):
        room.stream.later.update(text=mark_safe("<b>safe</b>"), id="a")
        room.stream.later.update(text="<b>plain</b>", id="b")
    assert receive() == '<turbo-stream action="update" target="a"><template><b>safe</b></template></turbo-stream>'
    assert receive() == '<turbo-stream action="update" target="b"><template>&lt;b&gt;plain&lt;/b&gt;</template></turbo-stream>'
