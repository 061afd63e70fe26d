"""The changes of one transaction, published as Celery tasks when it commits.

Changes are kept per database connection (so per alias and per thread). Each recorded change
registers a small marker with ``transaction.on_commit(..., using=alias)``; Django drops the
markers of a rolled-back savepoint or transaction, so a change counts only while its marker is
alive. When the first marker runs after the commit, the surviving changes are merged per object
(``created`` sticks, a delete supersedes saves) and one task per object is published.
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, models, transaction

logger = logging.getLogger("turbo_async")

SAVE = "save"
DELETE = "delete"


@dataclass
class Change:
    """What the worker needs to broadcast one change: JSON only."""

    label: str
    pk: Any
    event: str
    created: bool = False
    snapshot: dict[str, Any] | None = None

    @classmethod
    def save(cls, instance: models.Model, created: bool) -> Change:
        return cls(instance._meta.label_lower, _json_pk(instance), SAVE, bool(created))

    @classmethod
    def delete(cls, instance: models.Model) -> Change:
        return cls(instance._meta.label_lower, _json_pk(instance), DELETE, False, snapshot(instance))

    @property
    def key(self) -> tuple[str, Any]:
        return (self.label, self.pk)

    def merge(self, later: Change) -> Change:
        """This change followed by ``later`` on the same object, as one change."""
        if later.event == DELETE:
            return later
        if self.event == DELETE:  # deleted, then saved again under the same pk
            return Change(later.label, later.pk, SAVE, True)
        return Change(later.label, later.pk, SAVE, self.created or later.created)


def _json_pk(instance: models.Model) -> Any:
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


class _Marker:
    """The on_commit callback of one change; alive only while its savepoint is."""

    __slots__ = ("__weakref__", "batch", "change")

    def __init__(self, batch: _Transaction, change: Change) -> None:
        self.batch = batch
        self.change = change

    def __call__(self) -> None:
        self.batch.commit()


@dataclass
class _Transaction:
    alias: str
    markers: weakref.WeakSet[_Marker] = field(default_factory=weakref.WeakSet)
    order: list[weakref.ref[_Marker]] = field(default_factory=list)
    done: bool = False

    def add(self, change: Change) -> _Marker:
        marker = _Marker(self, change)
        self.markers.add(marker)
        self.order.append(weakref.ref(marker))
        return marker

    def alive(self) -> bool:
        return not self.done and len(self.markers) > 0

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        _forget(self)
        merged: dict[tuple[str, Any], Change] = {}
        for ref in self.order:
            marker = ref()
            if marker is None:  # its savepoint or transaction was rolled back
                continue
            key = marker.change.key
            merged[key] = merged[key].merge(marker.change) if key in merged else marker.change
        from . import outbox

        outbox.put(list(merged.values()), self.alias)


def _forget(batch: _Transaction) -> None:
    connection = connections[batch.alias]
    if getattr(connection, "_turbo_async_pending", None) is batch:
        connection._turbo_async_pending = None  # type: ignore[attr-defined]


def record(alias: str, change: Change) -> None:
    """Note a change on ``alias``; it is published when the transaction commits."""
    connection = connections[alias]
    batch: _Transaction | None = getattr(connection, "_turbo_async_pending", None)
    if batch is None or not batch.alive():
        batch = _Transaction(alias)
        connection._turbo_async_pending = batch  # type: ignore[attr-defined]
    transaction.on_commit(batch.add(change), using=alias)


_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "turbo_async_suppressed", default=False
)


def suppressed() -> bool:
    return _suppressed.get()


@contextmanager
def suppress() -> Iterator[None]:
    """Record no broadcasts for saves and deletes inside the block.

    >>> with turbo_async.suppress():
    ...     Message.objects.bulk_import(rows)  # no task per row
    """
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)
