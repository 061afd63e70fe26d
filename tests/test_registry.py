"""``turbo_async.registry``: which streams exist, by name and by model label. A pure registry:
registering records a stream and touches nothing else (tests/test_wiring.py covers what
``turbo_async.register`` does to the model)."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_save

import turbo_async as turbo
from tests.testapp.models import Plain
from tests.testapp.streams import MessageStream, RoomListStream
from turbo_async.registry import StreamRegistry, UnknownStream, stream_for_stream_name, stream_registry


def _stream_named(name: str) -> type[turbo.Stream]:
    """A new plain stream class called ``name`` (its stream name is ``":<name>"``: it is defined
    outside an installed app)."""
    return type(name, (turbo.Stream,), {"__module__": __name__})


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
    where = "tests.test_registry.test_two_model_streams_for_one_model_name_both.<locals>"
    assert str(excinfo.value) == (
        f"testapp.Plain has two ModelStreams: {where}.FirstPlainStream and "
        f"{where}.SecondPlainStream. A model can have only one ModelStream; merge them."
    )
    assert not hasattr(Plain, "stream")
    assert not post_save.has_listeners(Plain)


def test_two_streams_with_one_name_name_both() -> None:
    first, second = _stream_named("EchoStream"), _stream_named("EchoStream")
    registry = StreamRegistry()
    registry.register(first)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        registry.register(second)
    assert str(excinfo.value) == (
        "Two streams are named ':EchoStream': tests.test_registry.EchoStream and "
        "tests.test_registry.EchoStream. Rename one of them."
    )
    assert registry.get_stream(":EchoStream") is first


def test_registering_a_stream_again_is_harmless() -> None:
    registry = StreamRegistry()
    registry.register(MessageStream)
    registry.register(MessageStream)
    assert registry.get_stream_names() == ["testapp:MessageStream"]
    assert registry.get_model_stream("testapp.message") is MessageStream


def test_a_model_stream_is_found_by_name_and_by_model_label() -> None:
    registry = StreamRegistry()
    registry.register(MessageStream)
    assert registry.get_stream("testapp:MessageStream") is MessageStream
    assert registry.get_model_stream("testapp.message") is MessageStream


def test_a_plain_stream_has_no_model_label() -> None:
    registry = StreamRegistry()
    registry.register(RoomListStream)
    assert registry.get_stream("testapp:RoomListStream") is RoomListStream
    assert registry.model_streams == {}


def test_unregister_forgets_the_stream_by_name_and_by_label() -> None:
    registry = StreamRegistry()
    registry.register(MessageStream)
    registry.unregister(MessageStream)
    assert registry.get_stream_names() == []
    with pytest.raises(UnknownStream):
        registry.get_model_stream("testapp.message")


def test_unregister_leaves_another_stream_of_that_name_alone() -> None:
    first, second = _stream_named("EchoStream"), _stream_named("EchoStream")
    registry = StreamRegistry()
    registry.register(first)
    registry.unregister(second)
    assert registry.get_stream(":EchoStream") is first


def test_stream_names_are_listed_sorted() -> None:
    registry = StreamRegistry()
    registry.register(RoomListStream)
    registry.register(MessageStream)
    assert registry.get_stream_names() == ["testapp:MessageStream", "testapp:RoomListStream"]


def test_unknown_stream_name_lists_registered_ones() -> None:
    with pytest.raises(UnknownStream, match="No stream is registered as 'testapp:Nope'. Registered streams: .*testapp:RoomStream"):
        stream_registry.get_stream("testapp:Nope")


def test_an_empty_registry_says_none_are_registered() -> None:
    with pytest.raises(UnknownStream) as excinfo:
        StreamRegistry().get_stream("testapp:Nope")
    assert str(excinfo.value) == "No stream is registered as 'testapp:Nope'. Registered streams: none."


def test_unknown_model_label_is_refused() -> None:
    with pytest.raises(UnknownStream, match="No ModelStream is registered for the model label 'auth.user'"):
        stream_registry.get_model_stream("auth.user")


def test_turbo_djangos_two_argument_lookup_returns_none_for_an_unknown_stream() -> None:
    assert stream_registry.get_stream("testapp", "RoomListStream") is RoomListStream
    assert stream_registry.get_stream("testapp", "Nope") is None


def test_stream_for_stream_name_returns_the_class() -> None:
    assert stream_for_stream_name("testapp:RoomListStream") is RoomListStream


def test_stream_for_stream_name_logs_an_unknown_name_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        assert stream_for_stream_name("testapp:Nope") is None
    assert caplog.messages == ["No stream is registered as 'testapp:Nope'."]
