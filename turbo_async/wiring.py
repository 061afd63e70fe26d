"""Layer 7, wiring: find the streams, register them, and attach model streams to their models.

At start-up (``AppConfig.ready``) :func:`autodiscover` imports each installed app's ``streams``
module and registers every stream it defines. Registering a ``ModelStream`` gives every instance
of its model a lazy ``.stream`` (:class:`StreamDescriptor`) and connects the ``post_save`` /
``post_delete`` receivers for the hooks it defines, with each hook's Flower name bound in (for
both events when its ``Meta`` declares refreshes: the worker then refreshes without a hook, under
the Flower name ``<app>.<Stream>.refresh``).
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from django.apps import apps
from django.db import models
from django.utils.module_loading import autodiscover_modules

from . import signals
from .registry import stream_registry
from .streams import ModelStream, Stream


class StreamDescriptor:
    """``instance.stream``: built on access, so that loading rows costs nothing extra."""

    def __init__(self, stream_class: type[ModelStream[Any]]) -> None:
        self.stream_class = stream_class

    def __get__(self, instance: models.Model | None, owner: type | None = None) -> Any:
        if instance is None:
            return self.stream_class
        return self.stream_class.from_instance(instance)


S = TypeVar("S", bound="type[Stream]")


def register(stream_class: S) -> S:
    """Register a stream defined outside ``streams.py`` (import its module at start-up, e.g.
    from your ``AppConfig.ready()``, so that every web process knows it)::

        @turbo_async.register
        class RoomListStream(turbo_async.Stream):
            ...
    """
    stream_registry.register(stream_class)
    if issubclass(stream_class, ModelStream):
        _attach(stream_class)
    return stream_class


def unregister(stream_class: type[Stream]) -> None:
    """Forget a stream and undo what registering it did to its model (tests use this)."""
    if issubclass(stream_class, ModelStream):
        model = stream_class._meta.model
        if stream_registry.model_streams.get(model._meta.label_lower) is stream_class:
            signals.disconnect(model)
            if isinstance(vars(model).get("stream"), StreamDescriptor):
                delattr(model, "stream")
            vars(model._meta).pop("stream_model", None)
    stream_registry.unregister(stream_class)


def _attach(stream_class: type[ModelStream[Any]]) -> None:
    model: type[models.Model] = stream_class._meta.model
    model.stream = StreamDescriptor(stream_class)  # type: ignore[attr-defined]
    model._meta.stream_model = stream_class  # type: ignore[attr-defined]  # as turbo-django
    prefix = f"{model._meta.app_label}.{stream_class.__name__}"
    refreshes = stream_class.refreshes_declared()
    signals.connect(
        model,
        {
            event: f"{prefix}.{hook if stream_class.hook(event) is not None else 'refresh'}"
            for event, hook in stream_class.hooks.items()
            if stream_class.hook(event) is not None or refreshes
        },
    )


def autodiscover() -> None:
    """Import every installed app's ``streams`` module and register the streams it defines."""
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
                register(value)
