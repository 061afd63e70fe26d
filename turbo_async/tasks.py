"""Layer 8: the Celery task declarations that ``app.autodiscover_tasks()`` finds.

Every broadcast is one task, :func:`broadcast` (``turbo_async.batch``): the changes and
``stream.later`` actions of one or more commits, in commit order, in the wire format of
:mod:`turbo_async.changes` (a single change is a batch of one). Flower shows it under its hooks'
names (``chat.MessageStream.on_save``). :func:`refresh` is the delayed task of a debounced refresh.
The bodies live in :mod:`turbo_async.worker`; the request side publishes to these names
(:mod:`turbo_async.publish`) without importing this module. 0.1.0's one-change tasks are still
declared, for messages queued before an upgrade, until 0.3.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from django.db import DEFAULT_DB_ALIAS

from . import conf, delivery, outbox, worker
from .changes import BATCH_TASK, BROADCAST_TASK, STREAM_ACTION_TASK, from_payload, payload_of_message
from .exceptions import DeliveryError
from .refreshes import REFRESH_TASK

# Every task: acknowledged after they ran (a killed worker's task is redelivered; tasks converge,
# so running one twice is harmless), results only in the task events Flower reads. Retries are
# bounded by worker.retry (DELIVERY_MAX_AGE), not by Celery's count.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True, "acks_late": True, "reject_on_worker_lost": True, "ignore_result": True,
    "max_retries": None,
}


def _run(
    task: Task[Any, Any], what: str, body: Callable[[], dict[str, Any]],
    failing_since: float | None, stale: list[list[str]] | None, groups: list[str] | None,
) -> dict[str, Any]:
    """Run a broadcast's ``body``, with its frames marked as late when it waited for the layer
    (``failing_since``) and only the ``groups`` that failed before sent; or, once its frames were
    given up (``stale``), refresh its pages. A layer that cannot be reached retries the task
    (:func:`worker.retry`)."""
    try:
        if stale:
            return worker.refresh_stale(stale, failing_since)
        with delivery.waited_since(failing_since, groups):
            return body()
    except DeliveryError as exc:
        worker.retry(task, exc, what)


@shared_task(name=BATCH_TASK, **TASK_OPTIONS)
def broadcast(
    self: Task[Any, Any],
    items: list[Any],
    failing_since: float | None = None,
    stale: list[list[str]] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Broadcast ``items`` (:func:`worker.broadcast`): changes and actions in commit order, one
    query per model, one ``group_send`` per stream for the whole task."""
    return _run(self, _what(items), lambda: worker.broadcast(items), failing_since, stale, groups)


def _what(items: list[Any]) -> str:
    """The broadcast, for log lines: its change (``chat.message pk=5 (save)``) or its size."""
    if len(items) == 1:
        try:
            return from_payload(items[0])[0].describe()
        except ValueError:
            pass
    return f"a batch of {len(items)}"


# 0.1.0's tasks of one change and of one action (positional arguments), declared so that their
# messages still queued at an upgrade are broadcast, by the same path: remove in 0.3.0.


@shared_task(name=BROADCAST_TASK, **TASK_OPTIONS)
def broadcast_v1(
    self: Task[Any, Any],
    label: str,
    pk: Any,
    event: str,
    created: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    snapshot: dict[str, Any] | None = None,
    request_id: str = "",
    failing_since: float | None = None,
    stale: list[list[str]] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """0.1.0's ``turbo_async.broadcast(label, pk, event, created)``, until 0.3.0."""
    items = payload_of_message(
        BROADCAST_TASK, (label, pk, event, created), {"using": using, "snapshot": snapshot, "request_id": request_id}
    )
    return _run(self, _what(items), lambda: worker.broadcast(items), failing_since, stale, groups)


@shared_task(name=STREAM_ACTION_TASK, **TASK_OPTIONS)
def stream_action_v1(
    self: Task[Any, Any],
    stream_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    action: str,
    options: dict[str, Any],
    failing_since: float | None = None,
    stale: list[list[str]] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """0.1.0's ``turbo_async.stream_action(stream, args, kwargs, action, options)``, until 0.3.0."""
    items = payload_of_message(STREAM_ACTION_TASK, (stream_name, args, kwargs, action, options), {})
    return _run(self, _what(items), lambda: worker.broadcast(items), failing_since, stale, groups)


@shared_task(name=REFRESH_TASK, **TASK_OPTIONS)
def refresh(
    self: Task[Any, Any],
    group: str,
    stream_name: str,
    decided: str | None = None,
    failing_since: float | None = None,
    stale: list[list[str]] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Send a debounced refresh when it is due (scheduled by :mod:`turbo_async.refreshes`)."""
    try:
        if stale:
            return worker.refresh_stale(stale, failing_since)
        return worker.send_refresh(group, stream_name, decided)
    except worker.RefreshNotDelivered as exc:
        worker.retry(self, exc, f"{stream_name}.refresh", kwargs={"decided": exc.request_id})
    except DeliveryError as exc:
        worker.retry(self, exc, f"{stream_name}.refresh")


@worker_ready.connect
def start_outbox_sweep(**kwargs: Any) -> None:
    """With the database outbox, the worker's main process sweeps the outbox table: the rows of a
    web process killed between its commit and its publish go out within
    ``OUTBOX_SWEEP_AFTER + OUTBOX_SWEEP_INTERVAL`` seconds. Started once the pool has forked."""
    if conf.get().OUTBOX == "database":
        outbox.start()
