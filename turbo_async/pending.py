"""Layer 3, request side: the changes of one transaction, handed to the outbox when it commits.

Changes are kept per database connection (so per alias and per thread). Each recorded item
registers a small marker with ``transaction.on_commit(..., using=alias)``; Django drops the
markers of a rolled-back savepoint or transaction, so an item counts only while its marker is
alive. When the first marker runs after the commit, the surviving changes are merged per object
(``created`` sticks, a delete supersedes saves), ``stream.later`` actions keep their place, and the
whole commit goes to :mod:`~turbo_async.outbox`.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from . import outbox
from .changes import Change, StreamAction

Item = Change | StreamAction

_ATTRIBUTE = "_turbo_async_pending"  # the open _Transaction of a connection


class _Marker:
    """The on_commit callback of one item; alive only while its savepoint is."""

    __slots__ = ("__weakref__", "item", "transaction")

    def __init__(self, transaction: _Transaction, item: Item) -> None:
        self.transaction = transaction
        self.item = item

    def __call__(self) -> None:
        self.transaction.commit()


@dataclass
class _Transaction:
    alias: str
    markers: weakref.WeakSet[_Marker] = field(default_factory=weakref.WeakSet)
    order: list[weakref.ref[_Marker]] = field(default_factory=list)
    done: bool = False

    def add(self, item: Item) -> _Marker:
        marker = _Marker(self, item)
        self.markers.add(marker)
        self.order.append(weakref.ref(marker))
        return marker

    def alive(self) -> bool:
        return not self.done and len(self.markers) > 0

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        _detach(self)
        outbox.put(self.committed(), self.alias)

    def committed(self) -> list[Item]:
        """The surviving items in order, changes merged per object at their first place."""
        items: list[Item] = []
        places: dict[tuple[str, Any], int] = {}
        for ref in self.order:
            marker = ref()
            if marker is None:  # its savepoint or transaction was rolled back
                continue
            item = marker.item
            if isinstance(item, StreamAction):
                items.append(item)
                continue
            place = places.get(item.key)
            if place is None:
                places[item.key] = len(items)
                items.append(item)
            else:
                earlier = items[place]
                assert isinstance(earlier, Change)
                items[place] = earlier.merge(item)
        return items


def _detach(open_transaction: _Transaction) -> None:
    connection = connections[open_transaction.alias]
    if getattr(connection, _ATTRIBUTE, None) is open_transaction:
        setattr(connection, _ATTRIBUTE, None)


def record(alias: str, item: Item) -> None:
    """Note a change (or a ``stream.later`` action) on ``alias``; it is published on commit."""
    connection = connections[alias]
    open_transaction: _Transaction | None = getattr(connection, _ATTRIBUTE, None)
    if open_transaction is None or not open_transaction.alive():
        open_transaction = _Transaction(alias)
        setattr(connection, _ATTRIBUTE, open_transaction)
    transaction.on_commit(open_transaction.add(item), using=alias)


def defer(action: StreamAction, using: str | None = None) -> None:
    """Record a ``stream.later`` action in the transaction of ``using`` (by default the first
    database with an open transaction, else the default one); it is published on commit."""
    if using is None:
        using = next(
            (alias for alias in connections if connections[alias].in_atomic_block), DEFAULT_DB_ALIAS
        )
    record(using, action)


def cut() -> None:
    """Merge the changes recorded from now on apart from those recorded before.

    Inside one transaction (a ``TestCase``) changes of one object are merged (``created``
    sticks); ``turbo_async.testing`` cuts when a capture starts, so that editing a row created in
    the test's set-up is not broadcast as its creation. The earlier changes still publish when
    their own on-commit callbacks run.
    """
    for alias in connections:
        setattr(connections[alias], _ATTRIBUTE, None)


_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "turbo_async_suppressed", default=False
)


def suppressed() -> bool:
    return _suppressed.get()


@contextmanager
def suppress() -> Iterator[None]:
    """Record no broadcasts for saves and deletes inside the block.

    >>> with turbo_async.suppress():
    ...     call_command("loaddata", "rooms.json")  # no task per row
    """
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)
