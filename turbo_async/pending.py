"""Layer 3, request side: the changes of one transaction, handed to the outbox when it commits.

Changes are kept per database connection (so per alias and per thread). Each recorded item
registers a small marker with ``transaction.on_commit(..., using=alias)``; Django drops the
markers of a rolled-back savepoint or transaction, so an item counts only while its marker is
alive. When the first marker runs after the commit, the surviving changes are merged per object
(``created`` sticks, a delete supersedes saves), ``stream.later`` actions keep their place, and the
whole commit goes to :mod:`~turbo_async.outbox`.

With ``OUTBOX = "database"`` each item is also written, at once, as an outbox row in the same
transaction: it commits or rolls back with the save, and survives a process killed before it
published.

An application's own ``on_commit`` callback that raises makes Django skip the callbacks after it,
ours included; the connection's commit hook is wrapped once so that what committed is still
handed to the outbox (and a warning says so).
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from . import conf, outbox, publish, recording
from .changes import Change, StreamAction

logger = logging.getLogger("turbo_async")

Item = Change | StreamAction

_ATTRIBUTE = "_turbo_async_pending"  # the open _Transaction of a connection
_GUARDED = "_turbo_async_guarded"  # its commit hook is wrapped (see _guard)


class _Marker:
    """The on_commit callback of one item; alive only while its savepoint is."""

    __slots__ = ("__weakref__", "item", "row", "transaction")

    def __init__(self, transaction: _Transaction, item: Item, row: int | None) -> None:
        self.transaction = transaction
        self.item = item
        self.row = row

    def __call__(self) -> None:
        self.transaction.commit()


@dataclass
class _Transaction:
    alias: str
    markers: weakref.WeakSet[_Marker] = field(default_factory=weakref.WeakSet)
    order: list[weakref.ref[_Marker]] = field(default_factory=list)
    done: bool = False

    def add(self, item: Item, row: int | None) -> _Marker:
        marker = _Marker(self, item, row)
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
        try:
            outbox.put(self.committed(), self.alias)
        except Exception:
            if recording.active():  # a test recording broadcasts: a hook's error is the test's
                raise
            # A commit must never fail because of us; say what was lost.
            logger.exception("could not hand %d committed change(s) to the outbox", len(self.order))

    def committed(self) -> list[tuple[Item, list[int]]]:
        """The surviving items in order, changes merged per object at their first place, each
        with the outbox rows that stand for it."""
        items: list[tuple[Item, list[int]]] = []
        places: dict[tuple[str, Any], int] = {}
        for ref in self.order:
            marker = ref()
            if marker is None:  # its savepoint or transaction was rolled back
                continue
            item, rows = marker.item, [] if marker.row is None else [marker.row]
            if isinstance(item, StreamAction):
                items.append((item, rows))
                continue
            place = places.get(item.key)
            if place is None:
                places[item.key] = len(items)
                items.append((item, rows))
                continue
            earlier, earlier_rows = items[place]
            if isinstance(earlier, Change):
                items[place] = (earlier.merge(item), earlier_rows + rows)
        return items


def _detach(open_transaction: _Transaction) -> None:
    connection = connections[open_transaction.alias]
    if getattr(connection, _ATTRIBUTE, None) is open_transaction:
        setattr(connection, _ATTRIBUTE, None)


def record(alias: str, item: Item) -> None:
    """Note a change (or a ``stream.later`` action) on ``alias``; it is published on commit."""
    connection = connections[alias]
    _guard(connection)
    open_transaction: _Transaction | None = getattr(connection, _ATTRIBUTE, None)
    if open_transaction is None or not open_transaction.alive():
        open_transaction = _Transaction(alias)
        setattr(connection, _ATTRIBUTE, open_transaction)
    transaction.on_commit(open_transaction.add(item, _write_row(alias, item)), using=alias)


def _write_row(alias: str, item: Item) -> int | None:
    """With the database outbox, the item as an outbox row in the current transaction."""
    if conf.get().OUTBOX != "database" or recording.active() or conf.celery_app().conf.task_always_eager:
        return None
    name, args, kwargs = publish.message([(item, alias)])
    model = apps.get_model("turbo_async", "OutboxEntry")
    row = model._base_manager.using(alias).create(task=name, args=list(args), kwargs=kwargs, shadow=item.shadow)
    return int(row.pk)


def _guard(connection: Any) -> None:
    """Wrap the connection's commit hook once: if an on_commit callback registered before ours
    raises, Django drops the rest; hand what this transaction committed to the outbox anyway."""
    if getattr(connection, _GUARDED, False):
        return
    run_hooks: Callable[[], None] = connection.run_and_clear_commit_hooks

    def run_and_clear_commit_hooks() -> None:
        committed: _Transaction | None = getattr(connection, _ATTRIBUTE, None)
        try:
            run_hooks()
        except Exception:
            # Our markers are still referenced by Django's list in the traceback: alive.
            if committed is not None and committed.alive():
                logger.warning(
                    "an on_commit callback registered before turbo_async's raised; Django skipped "
                    "the callbacks after it, the %d broadcast(s) of this commit are published anyway",
                    len(committed.markers),
                )
                committed.commit()
            raise

    connection.run_and_clear_commit_hooks = run_and_clear_commit_hooks
    setattr(connection, _GUARDED, True)


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
