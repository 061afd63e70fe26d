"""Which streams exist: by ``app_label:ClassName`` (subscriptions) and by model label (workers).

Filled once, at start-up, by :func:`autodiscover` from each installed app's ``streams.py``.
Workers accept only labels found here; nothing is ever imported from a name in a message.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.module_loading import autodiscover_modules

if TYPE_CHECKING:
    from .streams import ModelStream, Stream


class UnknownStream(LookupError):
    """A stream name or model label that no registered stream answers to."""


class StreamRegistry:
    def __init__(self) -> None:
        self.streams: dict[str, type[Stream]] = {}
        self.model_streams: dict[str, type[ModelStream[Any]]] = {}

    def register(self, stream_class: type[Stream]) -> None:
        from .streams import ModelStream

        name = stream_class.stream_name
        existing = self.streams.get(name)
        if existing is not None and existing is not stream_class:
            raise ImproperlyConfigured(
                f"Two streams are named {name!r}: {_dotted(existing)} and {_dotted(stream_class)}. "
                "Rename one of them."
            )
        self.streams[name] = stream_class
        if issubclass(stream_class, ModelStream):
            self._register_model_stream(stream_class)

    def _register_model_stream(self, stream_class: type[ModelStream[Any]]) -> None:
        from . import signals
        from .streams import StreamDescriptor

        model: type[models.Model] = stream_class._meta.model
        label = model._meta.label_lower
        existing = self.model_streams.get(label)
        if existing is not None and existing is not stream_class:
            raise ImproperlyConfigured(
                f"{model._meta.label} has two ModelStreams: {_dotted(existing)} and "
                f"{_dotted(stream_class)}. A model can have only one ModelStream; merge them."
            )
        self.model_streams[label] = stream_class
        model.stream = StreamDescriptor(stream_class)  # type: ignore[attr-defined]
        model._meta.stream_model = stream_class  # type: ignore[attr-defined]  # as turbo-django
        signals.connect(model, stream_class)

    def unregister(self, stream_class: type[Stream]) -> None:
        """Forget a stream and undo what registering it did to its model (tests use this)."""
        from . import signals
        from .streams import ModelStream

        self.streams.pop(stream_class.stream_name, None)
        if issubclass(stream_class, ModelStream):
            model = stream_class._meta.model
            if self.model_streams.get(model._meta.label_lower) is stream_class:
                del self.model_streams[model._meta.label_lower]
                signals.disconnect(model)
                for attribute in ("stream",):
                    if attribute in vars(model):
                        delattr(model, attribute)
                vars(model._meta).pop("stream_model", None)

    def get_stream(self, stream_name: str) -> type[Stream]:
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


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


stream_registry = StreamRegistry()


def autodiscover() -> None:
    """Import every installed app's ``streams`` module and register the streams it defines."""
    from .streams import Stream

    autodiscover_modules("streams")
    for app_config in apps.get_app_configs():
        module = sys.modules.get(f"{app_config.name}.streams")
        if module is None:
            continue
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and issubclass(value, Stream)
                and value.__module__ == module.__name__
                and not value._meta.get("abstract", False)
            ):
                stream_registry.register(value)


S = TypeVar("S", bound="type[Stream]")


def register(stream_class: S) -> S:
    """Register a stream defined outside ``streams.py`` (import its module at start-up, e.g.
    from your ``AppConfig.ready()``, so that every web process knows it)::

        @turbo_async.register
        class RoomListStream(turbo_async.Stream):
            ...
    """
    stream_registry.register(stream_class)
    return stream_class
