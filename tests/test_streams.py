"""``turbo_async.streams``: Stream and ModelStream, turbo-django's API. Broadcast tests use
Channels' in-memory layer (tests/settings.py) to read what an explicit action sends; the frames
are escaped exactly as turbo-django escapes them."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.utils.html import format_html
from django.utils.safestring import mark_safe

import turbo_async as turbo
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Room
from tests.testapp.streams import MessageStream, RoomListStream, RoomStream
from turbo_async import delivery, names
from turbo_async.changes import bound_request_id


def listen(stream: turbo.Stream) -> tuple[Any, str]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(stream.broadcastable_stream_name, channel)
    return layer, channel


def receive(layer: Any, channel: str) -> dict[str, Any]:
    return async_to_sync(layer.receive)(channel)


@pytest.fixture
def group_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    original = delivery.group_send

    def record(group: str, message: dict[str, Any]) -> None:
        sent.append((group, message))
        original(group, message)

    monkeypatch.setattr(delivery, "group_send", record)
    return sent


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


@pytest.mark.django_db
def test_later_defers_an_explicit_action_to_a_task(
    group_sends: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    with turbo.suppress():
        room = RoomFactory()
        message = MessageFactory(room=room, text="later")
    layer, channel = listen(room.stream)
    with django_capture_on_commit_callbacks() as callbacks:
        room.stream.later.append("testapp/message.html", {"message": message}, id="messages")
    assert group_sends == []  # nothing before commit
    for callback in callbacks:
        callback()
    assert '<p class="message-text">later</p>' in receive(layer, channel)["data"]


# -- XSS -------------------------------------------------------------------------------------


@pytest.fixture
def turbo_django(settings: Any) -> types.ModuleType:
    """turbo-django 0.4.4 (installed as ``turbo``) with its own ``turbo/stream.html``."""
    import turbo

    settings.TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [str(Path(turbo.__file__).parent / "templates")],
            "APP_DIRS": True,
        }
    ]
    return turbo


def room_stream(pk: int) -> RoomStream:
    return RoomStream(pk)  # no row needed: RoomStream is built from its pk


async def receive_within(layer: Any, channel: str, timeout: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout)
    return message


def frames_of(stream: Any, action: str, **kwargs: Any) -> str:
    """The markup a stream action sends (collected, as inside a broadcast task)."""
    with delivery.collect() as outgoing:
        getattr(stream, action)(**kwargs)
    return "".join(outgoing.frames[stream.broadcastable_stream_name])


@pytest.mark.django_db
def test_template_contexts_are_autoescaped_in_broadcast_frames(
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Eager Celery and the in-memory layer: MessageStream renders testapp/message.html."""
    room = RoomFactory()
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(room.stream.broadcastable_stream_name, channel)
    with django_capture_on_commit_callbacks(execute=True):
        message = MessageFactory(room=room, text='<script>alert("x")</script><img src=x onerror=alert(1)>')
    data = async_to_sync(receive_within)(layer, channel)["data"]
    assert data.startswith('<turbo-stream action="append" target="messages"><template>')
    assert f'id="message-{message.pk}"' in data
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in data
    assert "<script" not in data and "<img" not in data


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
def test_a_plain_text_string_is_escaped_exactly_as_turbo_django_does(
    turbo_django: Any, action: str
) -> None:
    text = '<b onclick="x()">Hi</b> & <script>alert(1)</script>'
    ours = frames_of(room_stream(1), action, text=text, id="messages")
    theirs = getattr(turbo_django.TurboRender(text), action)(id="messages").rendered_template
    assert ours == theirs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ours


def test_text_marked_safe_is_inserted_as_given_exactly_as_turbo_django_does(turbo_django: Any) -> None:
    text = mark_safe('<b class="new">Hi</b>')
    ours = frames_of(room_stream(1), "append", text=text, id="messages")
    assert ours == turbo_django.TurboRender(text).append(id="messages").rendered_template
    assert ours == (
        '<turbo-stream action="append" target="messages"><template><b class="new">Hi</b></template></turbo-stream>'
    )


def test_format_html_inserts_its_markup_and_escapes_its_arguments(turbo_django: Any) -> None:
    text = format_html("<b>{}</b>", "<script>alert(1)</script>")
    ours = frames_of(room_stream(1), "update", text=text, selector=".greeting")
    assert ours == turbo_django.TurboRender(text).update(selector=".greeting").rendered_template
    assert "<template><b>&lt;script&gt;alert(1)&lt;/script&gt;</b></template>" in ours


# -- Turbo 8: morph, custom actions, request ids (issue 14) -----------------------------------


def later_frames(room: Room, callback: Any, django_capture_on_commit_callbacks: Any) -> str:
    """What ``callback(room.stream.later)`` sends once committed and run (eagerly) by the task."""
    layer, channel = listen(room.stream)
    with django_capture_on_commit_callbacks() as callbacks:
        callback(room.stream.later)
    for committed in callbacks:
        committed()
    return str(receive(layer, channel)["data"])


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["replace", "update"])
def test_replace_and_update_morph_now_and_later(
    action: str, group_sends: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    room = RoomFactory()
    expected = (
        f'<turbo-stream action="{action}" target="room-{room.pk}" method="morph">'
        f'<template><li id="tag-s">L</li></template></turbo-stream>'
    )
    context = {"tag": {"slug": "s", "label": "L"}}
    layer, channel = listen(room.stream)
    getattr(room.stream, action)("testapp/tag.html", context, id=f"room-{room.pk}", method="morph")
    assert receive(layer, channel)["data"] == expected
    sent = later_frames(
        room,
        lambda later: getattr(later, action)("testapp/tag.html", context, id=f"room-{room.pk}", method="morph"),
        django_capture_on_commit_callbacks,
    )
    assert sent == expected


def test_morph_on_another_action_is_refused_before_anything_is_deferred(db: None) -> None:
    room = RoomFactory()
    with pytest.raises(ValueError, match="method='morph' applies to replace and update only"):
        room.stream.later.broadcast_action("append", text="x", id="y", method="morph")
    with pytest.raises(TypeError):
        room.stream.append(text="x", id="y", method="morph")  # type: ignore[call-arg]


@pytest.mark.django_db
def test_custom_action_now_and_later(django_capture_on_commit_callbacks: Any) -> None:
    room = RoomFactory()
    expected = (
        '<turbo-stream action="notify" target="alerts" data-level="info">'
        "<template>Saved &lt;b&gt;</template></turbo-stream>"
    )
    layer, channel = listen(room.stream)
    room.stream.action("notify", text="Saved <b>", target="alerts", attributes={"data-level": "info"})
    assert receive(layer, channel)["data"] == expected
    sent = later_frames(
        room,
        lambda later: later.action("notify", text="Saved <b>", target="alerts", attributes={"data-level": "info"}),
        django_capture_on_commit_callbacks,
    )
    assert sent == expected
    assert receive(layer, channel)["data"] == expected  # this listener got the later one too
    room.stream.action("log", "testapp/tag.html", {"tag": {"slug": "s", "label": "L"}}, targets=".log")
    assert receive(layer, channel)["data"] == (
        '<turbo-stream action="log" targets=".log"><template><li id="tag-s">L</li></template></turbo-stream>'
    )


def test_custom_action_injection_is_refused_before_anything_is_sent_or_deferred(
    db: None, group_sends: list[Any]
) -> None:
    room = RoomFactory()
    for stream in (room.stream, room.stream.later):
        with pytest.raises(ValueError, match="is not a valid Turbo Stream action name"):
            stream.action('x" onmouseover="alert(1)', text="t", target="a")
        with pytest.raises(ValueError, match="looks like an event handler attribute"):
            stream.action("notify", text="t", target="a", attributes={"onerror": "alert(1)"})
        with pytest.raises(ValueError, match="is not a valid attribute name"):
            stream.action("notify", text="t", target="a", attributes={'a="1" onclick': "x"})
    assert group_sends == []


def test_refresh_outside_a_worker_sends_now_with_the_current_request_id(db: None) -> None:
    room = RoomFactory()
    layer, channel = listen(room.stream)
    with bound_request_id("4a1b-req"):
        room.stream.refresh()
    room.stream.refresh()
    assert receive(layer, channel)["data"] == '<turbo-stream action="refresh" request-id="4a1b-req"></turbo-stream>'
    assert receive(layer, channel)["data"] == '<turbo-stream action="refresh"></turbo-stream>'


@pytest.mark.django_db
def test_later_refresh_carries_the_request_id_to_the_task(django_capture_on_commit_callbacks: Any) -> None:
    room = RoomFactory()

    def refresh(later: turbo.Stream) -> None:
        with bound_request_id("from-the-request"):
            later.refresh()

    sent = later_frames(room, refresh, django_capture_on_commit_callbacks)
    assert sent == '<turbo-stream action="refresh" request-id="from-the-request"></turbo-stream>'


# -- broadcast_action: the one call every action is, now and later ------------------------------


def test_every_action_is_broadcast_action_with_its_keywords(db: None) -> None:
    room = RoomFactory()
    direct = frames_of(room.stream, "replace", text="x", id="y", method="morph")
    with delivery.collect() as outgoing:
        room.stream.broadcast_action("replace", text="x", id="y", method="morph")
    assert "".join(outgoing.frames[room.stream.broadcastable_stream_name]) == direct


def test_later_records_the_keywords_of_broadcast_action(monkeypatch: pytest.MonkeyPatch, db: None) -> None:
    """What a worker makes is ``stream.broadcast_action(action, **options)``: the deferred call,
    with the same keywords (as turbo-rails' ``broadcast_*_later`` jobs)."""
    from turbo_async import pending

    recorded: list[Any] = []
    monkeypatch.setattr(pending, "defer", recorded.append)
    room = RoomFactory()
    room.stream.later.update(text="hi", id="greeting", method="morph")
    [action] = recorded
    assert (action.stream_name, action.args, action.action) == ("testapp:RoomStream", [room.pk], "update")
    assert action.options == {"selector": None, "id": "greeting", "template": None, "context": None, "text": "hi",
                              "method": "morph"}
    with delivery.collect() as outgoing:
        RoomStream(room.pk).broadcast_action(action.action, **action.options)
    assert "".join(outgoing.frames[room.stream.broadcastable_stream_name]) == (
        '<turbo-stream action="update" target="greeting" method="morph"><template>hi</template></turbo-stream>'
    )


def test_an_unknown_action_is_refused_naming_the_known_ones(db: None) -> None:
    room = RoomFactory()
    with pytest.raises(ValueError, match=r"Unknown stream action 'explode'; expected one of append, prepend, .*refresh, "
                                         r"or custom=True for a custom action."):
        room.stream.broadcast_action("explode", text="x", id="y")
