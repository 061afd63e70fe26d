"""Layer 0 (a leaf): what one committed change carries to a worker, JSON only.

A :class:`Change` is a row's ``(label, pk, event, created)`` plus, for a delete, a snapshot of the
row's concrete field values (a deleted row cannot be reloaded); :func:`rebuild` turns a snapshot
back into an unsaved instance in the worker. A :class:`StreamAction` is one explicit
``stream.later.<action>(...)`` call. Both also carry ``shadow``, the name Flower shows for the task;
it travels as Celery's task option, not in the payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import models

SAVE = "save"
DELETE = "delete"

BROADCAST_TASK = "turbo_async.broadcast"
"""The Celery task of a :class:`Change` (declared in :mod:`turbo_async.tasks`)."""
STREAM_ACTION_TASK = "turbo_async.stream_action"
"""The Celery task of a :class:`StreamAction`."""
BATCH_TASK = "turbo_async.batch"
"""The Celery task of a batch: several changes and actions that queued up, in commit order."""


@dataclass
class Change:
    """A saved or deleted row, as the worker needs it to broadcast."""

    label: str
    pk: Any
    event: str
    created: bool = False
    snapshot: dict[str, Any] | None = None
    shadow: str = field(default="", compare=False)

    @classmethod
    def save(cls, instance: models.Model, created: bool, shadow: str = "") -> Change:
        return cls(instance._meta.label_lower, json_pk(instance), SAVE, bool(created), shadow=shadow)

    @classmethod
    def delete(cls, instance: models.Model, shadow: str = "") -> Change:
        return cls(
            instance._meta.label_lower, json_pk(instance), DELETE, False, snapshot(instance), shadow=shadow
        )

    @property
    def key(self) -> tuple[str, Any]:
        return (self.label, self.pk)

    def merge(self, later: Change) -> Change:
        """This change followed by ``later`` on the same object, as one change."""
        if later.event == DELETE:
            return later
        if self.event == DELETE:  # deleted, then saved again under the same pk
            return Change(later.label, later.pk, SAVE, True, shadow=later.shadow)
        return Change(later.label, later.pk, SAVE, self.created or later.created, shadow=later.shadow)

    def describe(self) -> str:
        """``chat.message pk=5 (save)``, for log lines."""
        return f"{self.label} pk={self.pk!r} ({self.event})"

    def payload(self, using: str) -> dict[str, Any]:
        """This change as one item of a batch task's argument (JSON)."""
        item: dict[str, Any] = {"label": self.label, "pk": self.pk, "event": self.event, "created": self.created}
        if using != "default":
            item["using"] = using
        if self.snapshot is not None:
            item["snapshot"] = self.snapshot
        return item


@dataclass
class StreamAction:
    """``stream.later.<action>(...)``: a stream's identity, the action and its encoded options."""

    stream_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    action: str
    options: dict[str, Any]
    shadow: str = field(default="", compare=False)

    def describe(self) -> str:
        return f"{self.stream_name}.{self.action}"

    def payload(self, using: str) -> dict[str, Any]:
        """This action as one item of a batch task's argument (JSON)."""
        return {
            "stream": self.stream_name, "args": self.args, "kwargs": self.kwargs,
            "action": self.action, "options": self.options,
        }


def json_pk(instance: models.Model) -> Any:
    pk = instance.pk
    if isinstance(pk, (int, str)) and not isinstance(pk, bool):
        return pk
    return instance._meta.pk.value_to_string(instance)


def snapshot(instance: models.Model) -> dict[str, Any]:
    """The concrete field values of a row, JSON-safe, keyed by attname (``room_id``)."""
    values: dict[str, Any] = {}
    for f in instance._meta.concrete_fields:
        value = f.value_from_object(instance)
        plain = value is None or isinstance(value, (bool, int, float, str))
        values[f.attname] = value if plain else f.value_to_string(instance)
    return values


def rebuild(model: type[models.Model], snapshot: dict[str, Any], using: str) -> models.Model:
    """An unsaved instance with a deleted row's values, so ``message.room`` still works."""
    values = {
        f.attname: f.to_python(snapshot[f.attname])
        for f in model._meta.concrete_fields
        if f.attname in snapshot
    }
    instance = model(**values)
    instance._state.adding = False
    instance._state.db = using
    return instance
