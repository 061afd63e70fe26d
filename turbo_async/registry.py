"""Layer 5: which streams exist, by ``app_label:ClassName`` (subscriptions) and by model label
(workers). A pure registry: it records and answers; :mod:`~turbo_async.wiring` fills it at start-up
and attaches the streams to their models. Workers accept only labels found here; nothing is ever
imported from a name in a message.

turbo-django's names keep working: ``turbo_async.registry.stream_registry``,
``stream_registry.get_stream("chat", "RoomStream")`` and :func:`stream_for_stream_name`.
"""

from __future__ import annotations

import logging
from typing import Any, overload

from django.core.exceptions import ImproperlyConfigured

from .exceptions import UnknownStream
from .streams import ModelStream, Stream

__all__ = ["StreamRegistry", "UnknownStream", "dotted_path", "stream_for_stream_name", "stream_registry"]

logger = logging.getLogger("turbo_async")


def dotted_path(cls: type) -> str:
    """``package.module.ClassName``, for messages that must name a class unambiguously."""
    return f"{cls.__module__}.{cls.__qualname__}"


class StreamRegistry:
    def __init__(self) -> None:
        self.streams: dict[str, type[Stream]] = {}
        self.model_streams: dict[str, type[ModelStream[Any]]] = {}

    def register(self, stream_class: type[Stream]) -> None:
        """Record a stream; a second stream with the same name, or a second ModelStream of one
        model, is an ``ImproperlyConfigured`` error that names both."""
        name = stream_class.stream_name
        existing = self.streams.get(name)
        if existing is not None and existing is not stream_class:
            raise ImproperlyConfigured(
                f"Two streams are named {name!r}: {dotted_path(existing)} and "
                f"{dotted_path(stream_class)}. Rename one of them."
            )
        if issubclass(stream_class, ModelStream):
            model = stream_class._meta.model
            other = self.model_streams.get(model._meta.label_lower)
            if other is not None and other is not stream_class:
                raise ImproperlyConfigured(
                    f"{model._meta.label} has two ModelStreams: {dotted_path(other)} and "
                    f"{dotted_path(stream_class)}. A model can have only one ModelStream; merge them."
                )
            self.model_streams[model._meta.label_lower] = stream_class
        self.streams[name] = stream_class

    def add_stream(self, app_name: str, stream_name: str, stream: type[Stream]) -> None:
        """turbo-django's way to record a stream: under ``"app_name:stream_name"``.

        It only records (as in turbo-django); to attach a ModelStream to its model as well, use
        ``turbo_async.register``.
        """
        if stream.stream_name != f"{app_name}:{stream_name}":
            raise ImproperlyConfigured(
                f"{dotted_path(stream)} is named {stream.stream_name!r}, not {app_name}:{stream_name}. "
                "Give it Meta.app_name, or register it with turbo_async.register."
            )
        self.register(stream)

    def unregister(self, stream_class: type[Stream]) -> None:
        if self.streams.get(stream_class.stream_name) is stream_class:
            del self.streams[stream_class.stream_name]
        if issubclass(stream_class, ModelStream):
            label = stream_class._meta.model._meta.label_lower
            if self.model_streams.get(label) is stream_class:
                del self.model_streams[label]

    @overload
    def get_stream(self, stream_name: str) -> type[Stream]: ...
    @overload
    def get_stream(self, stream_name: str, class_name: str) -> type[Stream] | None: ...

    def get_stream(self, stream_name: str, class_name: str | None = None) -> type[Stream] | None:
        """The stream named ``"app_label:ClassName"``; raises :class:`UnknownStream` if none is.

        turbo-django's two-argument form ``get_stream("app_label", "ClassName")`` returns None
        for an unknown stream, as it did there.
        """
        if class_name is not None:
            return self.streams.get(f"{stream_name}:{class_name}")
        try:
            return self.streams[stream_name]
        except KeyError:
            raise UnknownStream(
                f"No stream is registered as {stream_name!r}. Registered streams: "
                f"{', '.join(sorted(self.streams)) or 'none'}."
            ) from None

    def get_model_stream(self, label: str) -> type[ModelStream[Any]]:
        try:
            return self.model_streams[label]
        except KeyError:
            raise UnknownStream(
                f"No ModelStream is registered for the model label {label!r}; refusing it."
            ) from None

    def get_stream_names(self) -> list[str]:
        return sorted(self.streams)


stream_registry = StreamRegistry()


def stream_for_stream_name(stream_name: str) -> type[Stream] | None:
    """turbo-django's lookup: the stream class named ``"app_label:ClassName"``, or None (logged).

    >>> stream_for_stream_name("chat:RoomListStream")
    <class 'chat.streams.RoomListStream'>
    """
    stream_class = stream_registry.streams.get(stream_name) if isinstance(stream_name, str) else None
    if stream_class is None:
        logger.warning("No stream is registered as %r.", stream_name)
    return stream_class
