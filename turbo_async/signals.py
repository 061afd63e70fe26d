"""Layer 3, request side: the ``post_save`` / ``post_delete`` receivers of streamed models.

They do as little as possible on the request path: note the change (label, pk, event) in the
pending changes of the current transaction. Nothing is rendered and nothing is sent here.
:mod:`~turbo_async.wiring` connects them once per model, for the events its stream has hooks for,
with the Flower name of each hook bound in.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save

from . import pending
from .changes import DELETE, SAVE, Change


class Receivers:
    """The receivers of one model; ``shadows`` maps each event to its task's Flower name."""

    def __init__(self, shadows: dict[str, str]) -> None:
        self.shadows = shadows

    def saved(
        self, sender: type[models.Model], instance: models.Model, created: bool,
        using: str = "default", **kwargs: Any,
    ) -> None:
        # Fixture loading (raw=True) broadcasts too, as in turbo-django: wrap bulk loads in
        # turbo_async.suppress() to skip them.
        if pending.suppressed():
            return
        pending.record(using, Change.save(instance, created, self.shadows[SAVE]))

    def deleted(
        self, sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any
    ) -> None:
        if pending.suppressed():
            return
        pending.record(using, Change.delete(instance, self.shadows[DELETE]))


def _uid(model: type[models.Model]) -> str:
    return f"turbo_async:{model._meta.label_lower}"


def connect(model: type[models.Model], shadows: dict[str, str]) -> None:
    """Connect the receivers of ``model`` for the events in ``shadows``, once per model."""
    receivers = Receivers(shadows)
    if SAVE in shadows:
        post_save.connect(receivers.saved, sender=model, weak=False, dispatch_uid=_uid(model))
    if DELETE in shadows:
        post_delete.connect(receivers.deleted, sender=model, weak=False, dispatch_uid=_uid(model))


def disconnect(model: type[models.Model]) -> None:
    post_save.disconnect(sender=model, dispatch_uid=_uid(model))
    post_delete.disconnect(sender=model, dispatch_uid=_uid(model))
