"""The ``post_save`` / ``post_delete`` receivers of streamed models.

They do as little as possible on the request path: note the change (label, pk, event) in the
pending changes of the current transaction. Nothing is rendered and nothing is sent here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models.signals import post_delete, post_save

from . import pending

if TYPE_CHECKING:
    from .streams import ModelStream


def connect(model: type[models.Model], stream_class: type[ModelStream[Any]]) -> None:
    """Connect the receivers for the hooks that ``stream_class`` defines, once per model."""
    label = model._meta.label_lower
    if callable(getattr(stream_class, "on_save", None)):
        post_save.connect(record_save, sender=model, weak=False, dispatch_uid=f"turbo_async:{label}")
    if callable(getattr(stream_class, "on_delete", None)):
        post_delete.connect(
            record_delete, sender=model, weak=False, dispatch_uid=f"turbo_async:{label}"
        )


def disconnect(model: type[models.Model]) -> None:
    uid = f"turbo_async:{model._meta.label_lower}"
    post_save.disconnect(sender=model, dispatch_uid=uid)
    post_delete.disconnect(sender=model, dispatch_uid=uid)


def record_save(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool = False,
    using: str = "default", **kwargs: Any,
) -> None:
    if raw or pending.suppressed():
        return
    pending.record(using, pending.Change.save(instance, created))


def record_delete(
    sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any
) -> None:
    if pending.suppressed():
        return
    pending.record(using, pending.Change.delete(instance))
