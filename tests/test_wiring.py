"""``turbo_async.wiring``: streams.py modules are found at start-up; registering a ModelStream
gives its model a lazy ``.stream`` and connects receivers for the hooks it defines, with each
hook's Flower name bound in; ``unregister`` undoes all of it.

Streams registered here are attached to ``testapp.Plain`` (it has none) and unregistered after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db.models.signals import post_delete, post_init, post_save

import turbo_async as turbo
from tests.conftest import Published
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Message, Plain, Room
from tests.testapp.streams import MessageStream, RoomStream, TagListStream
from turbo_async import wiring
from turbo_async.exceptions import UnknownStream
from turbo_async.registry import stream_registry
from turbo_async.wiring import StreamDescriptor


def _plain_streams() -> tuple[type[turbo.ModelStream[Any]], type[turbo.ModelStream[Any]]]:
    """Two streams of ``testapp.Plain``, registered only by the tests that use them (defined in
    a function: ``manage.py check`` would warn about unregistered module-level ModelStreams)."""

    class SaveOnlyStream(turbo.ModelStream):  # type: ignore[type-arg]
        class Meta:
            model = Plain

        def on_save(self, plain: Any, created: bool, *args: Any, **kwargs: Any) -> None:
            pass

    class DeleteOnlyStream(turbo.ModelStream):  # type: ignore[type-arg]
        class Meta:
            model = Plain

        def on_delete(self, plain: Any, *args: Any, **kwargs: Any) -> None:
            pass

    return SaveOnlyStream, DeleteOnlyStream


SaveOnlyStream, DeleteOnlyStream = _plain_streams()


@pytest.fixture
def registered(request: pytest.FixtureRequest) -> Iterator[type[turbo.ModelStream[Any]]]:
    """The stream class given as the test's parameter, registered for the test."""
    stream_class = request.param
    turbo.register(stream_class)
    try:
        yield stream_class
    finally:
        wiring.unregister(stream_class)


def test_streams_py_is_autodiscovered() -> None:
    assert stream_registry.get_stream("testapp:RoomStream") is RoomStream
    assert stream_registry.get_model_stream("testapp.message") is MessageStream


def test_plain_streams_of_streams_py_are_autodiscovered_too() -> None:
    assert stream_registry.get_stream("testapp:TagListStream") is TagListStream


@pytest.mark.django_db
def test_every_instance_has_its_stream() -> None:
    room = RoomFactory()
    assert isinstance(room.stream, RoomStream)
    assert room.stream.pk == room.pk
    assert room.stream.instance is room


def test_no_post_init_handler_is_connected() -> None:
    assert not post_init.has_listeners(Message)
    assert not post_init.has_listeners(Room)


def test_model_class_stream_is_the_stream_class() -> None:
    assert Room.stream is RoomStream


def test_the_model_meta_names_its_stream_as_in_turbo_django() -> None:
    assert Room._meta.stream_model is RoomStream  # type: ignore[attr-defined]


def test_register_returns_the_class_so_it_works_as_a_decorator() -> None:
    stream_class = type("DecoratedStream", (turbo.Stream,), {"__module__": __name__})
    try:
        assert turbo.register(stream_class) is stream_class
        assert stream_registry.get_stream(":DecoratedStream") is stream_class
    finally:
        wiring.unregister(stream_class)
    with pytest.raises(UnknownStream):
        stream_registry.get_stream(":DecoratedStream")


@pytest.mark.parametrize("registered", [SaveOnlyStream], indirect=True)
def test_a_stream_with_on_save_only_connects_post_save_only(registered: Any) -> None:
    assert post_save.has_listeners(Plain)
    assert not post_delete.has_listeners(Plain)


@pytest.mark.parametrize("registered", [DeleteOnlyStream], indirect=True)
def test_a_stream_with_on_delete_only_connects_post_delete_only(registered: Any) -> None:
    assert post_delete.has_listeners(Plain)
    assert not post_save.has_listeners(Plain)


@pytest.mark.parametrize("registered", [SaveOnlyStream], indirect=True)
def test_registering_attaches_a_lazy_stream_to_the_model(registered: Any) -> None:
    assert isinstance(vars(Plain)["stream"], StreamDescriptor)
    assert Plain.stream is SaveOnlyStream  # type: ignore[attr-defined]
    assert Plain(pk=3, name="p").stream.pk == 3  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("registered", [SaveOnlyStream], indirect=True)
def test_the_hooks_flower_name_is_bound_at_registration(registered: Any, published: Published) -> None:
    plain = Plain.objects.create(name="p")
    assert published.events() == [("testapp.plain", plain.pk, "save", True)]
    assert published[0]["options"]["shadow"] == "testapp.SaveOnlyStream.on_save"


def test_unregister_undoes_what_register_did() -> None:
    turbo.register(SaveOnlyStream)
    wiring.unregister(SaveOnlyStream)
    assert not post_save.has_listeners(Plain)
    assert not post_delete.has_listeners(Plain)
    assert not hasattr(Plain, "stream")
    assert not hasattr(Plain._meta, "stream_model")
    with pytest.raises(UnknownStream):
        stream_registry.get_model_stream("testapp.plain")


def test_unregistering_a_stream_that_is_not_the_models_leaves_the_model_alone() -> None:
    turbo.register(SaveOnlyStream)
    try:
        wiring.unregister(DeleteOnlyStream)  # never registered: Plain's stream is SaveOnlyStream
        assert post_save.has_listeners(Plain)
        assert Plain.stream is SaveOnlyStream  # type: ignore[attr-defined]
    finally:
        wiring.unregister(SaveOnlyStream)


@pytest.mark.django_db(transaction=True)
def test_task_is_named_after_the_hook_for_flower(published: Published) -> None:
    message = MessageFactory()
    message.delete()
    assert [call["options"]["shadow"] for call in published] == [
        "testapp.MessageStream.on_save",
        "testapp.MessageStream.on_delete",
    ]


@pytest.mark.django_db(transaction=True)
def test_models_whose_stream_has_no_hooks_publish_nothing(published: Published) -> None:
    room = RoomFactory()  # RoomStream defines neither on_save nor on_delete
    room.delete()
    assert published == []
