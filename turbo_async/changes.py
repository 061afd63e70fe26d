"""Layer 0 (a leaf): what one committed change carries to a worker, JSON only.

A :class:`Change` is a row's ``(label, pk, event, created)`` plus, for a delete, a snapshot of the
row's concrete field values (a deleted row cannot be reloaded); :func:`rebuild` turns a snapshot
back into an unsaved instance in the worker. A :class:`StreamAction` is one explicit
``stream.later.<action>(...)`` call. Both also carry ``shadow``, the name Flower shows for the task;
it travels as Celery's task option, not in the payload.

A change made during a request that Turbo sent with ``X-Turbo-Request-Id``
(:mod:`turbo_async.middleware`) also carries that id, so that the refresh it causes carries it
too: :func:`bound_request_id` sets it for a block (the request, or the worker's task) and
:func:`current_request_id` reads it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("turbo_async_request_id", default="")


def current_request_id() -> str:
    """The Turbo request id of the request (or the task) running now; ``""`` when there is none."""
    return _request_id.get()


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Make ``request_id`` the current one inside the block (``None`` or ``""``: none)."""
    token = _request_id.set(request_id or "")
    try:
        yield
    finally:
        _request_id.reset(token)


@dataclass
class Change:
    """A saved or deleted row, as the worker needs it to broadcast."""

    label: str
    pk: Any
    event: str
    created: bool = False
    snapshot: dict[str, Any] | None = None
    shadow: str = field(default="", compare=False)
    request_id: str = field(default="", compare=False)
    """Turbo's ``X-Turbo-Request-Id`` of the request that made the change (``""``: none)."""

    @classmethod
    def save(cls, instance: models.Model, created: bool, shadow: str = "") -> Change:
        return cls(
            instance._meta.label_lower, json_pk(instance), SAVE, bool(created), shadow=shadow,
            request_id=current_request_id(),
        )

    @classmethod
    def delete(cls, instance: models.Model, shadow: str = "") -> Change:
        return cls(
            instance._meta.label_lower, json_pk(instance), DELETE, False, snapshot(instance), shadow=shadow,
            request_id=current_request_id(),
        )

    @property
    def key(self) -> tuple[str, Any]:
        return (self.label, self.pk)

    def merge(self, later: Change) -> Change:
        """This change followed by ``later`` on the same object, as one change (the request id
        of the last change that had one wins)."""
        request_id = later.request_id or self.request_id
        if later.event == DELETE:
            return later if later.request_id == request_id else replace(later, request_id=request_id)
        if self.event == DELETE:  # deleted, then saved again under the same pk
            return Change(later.label, later.pk, SAVE, True, shadow=later.shadow, request_id=request_id)
        return Change(
            later.label, later.pk, SAVE, self.created or later.created, shadow=later.shadow,
            request_id=request_id,
        )

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
        if self.request_id:
            item["request_id"] = self.request_id
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
