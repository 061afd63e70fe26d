"""Layer 3, request side: queue the Celery task of committed changes and ``stream.later`` actions.

Every broadcast is one task, ``turbo_async.batch``, carrying its items in the wire format of
:mod:`turbo_async.changes` (one item, or several that queued up in the outbox). The tasks are
addressed by name through the process's Celery app, as Celery producers do: the request side never
imports the worker code. Each item carries its Flower name (``shadow``), bound once when its
stream was registered, so publishing never looks anything up in the stream registry. The delayed
task of a debounced refresh goes out with the same options (:func:`schedule`): queue, publish
retries, Flower name, and the commit time metrics measure the lag from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery._state import get_current_task
from django.db import DEFAULT_DB_ALIAS

from . import broker, conf, metrics, recording
from .broker import describe_broker
from .changes import BATCH_TASK, Change, StreamAction, to_payload

logger = logging.getLogger("turbo_async")


def publish(item: Change | StreamAction, alias: str = DEFAULT_DB_ALIAS) -> None:
    """Queue the broadcast of one committed item, now (at commit, not through the outbox).

    Never raises: a save must not fail because the broker is down or the item is broken; the
    failure is logged with the label and pk (and the broadcast run in this process if
    ``ON_PUBLISH_ERROR`` is ``"inline"``). While a test records broadcasts the task runs here,
    now, and a hook's exception reaches the test.
    """
    if recording.active():
        run_here(item, alias, throw=True)
        return
    try:
        send([(item, alias)])
    except Exception as exc:
        failed(item, alias, exc)


def send(items: Sequence[tuple[Change | StreamAction, str]], producer: Any = None) -> None:
    """Send ``items`` (each with its database alias) as one ``turbo_async.batch`` task; raises
    what the broker raised.

    Flower shows it under the names of the hooks it runs (:func:`batch_name`: a lone change's
    hook, ``chat.MessageStream.on_save``, or for example
    ``chat.MessageStream.on_save + chat.RoomListStream.refresh``), never as ``turbo_async.batch``,
    and lists its changes in the args column as ``(label, pk, event, created)``
    (:func:`describe_batch`), so one search finds a row's broadcasts whatever the batching.
    """
    shadow = batch_name([item.shadow or item.describe() for item, _ in items])
    conf.celery_app().tasks[BATCH_TASK].apply_async(
        (to_payload(items),), argsrepr=describe_batch(items), producer=producer, **options(shadow, conf.get()),
        **metrics.headers(),
    )


BATCH_NAME_MAX_LENGTH = 160
"""Characters of a batch's Flower name beyond which its further hooks are only counted."""
BATCH_ARGSREPR_MAX_LENGTH = 8000
"""Characters of a batch's args column; a full batch of ``BATCH_MAX_SIZE`` (100) changes with
integer or UUID pks fits, so every row of it can be searched for."""


def batch_name(names: Sequence[str], limit: int = BATCH_NAME_MAX_LENGTH) -> str:
    """The Flower name (Celery's ``shadow``) of a batch running the hooks ``names``, in commit order.

    Each hook is named once, in the order it first came, with a count when it runs more than
    once; past ``limit`` characters the remaining hooks are counted instead of named:

    >>> batch_name(["chat.MessageStream.on_save", "chat.RoomListStream.refresh"])
    'chat.MessageStream.on_save + chat.RoomListStream.refresh'
    >>> batch_name(["chat.MessageStream.on_save"] * 3)
    'chat.MessageStream.on_save x3'
    >>> batch_name(["a.A.on_save", "b.B.on_save", "c.C.on_save"], limit=30)
    'a.A.on_save + 2 more'
    """
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    parts = [name if count == 1 else f"{name} x{count}" for name, count in counts.items()]
    text = " + ".join(parts)
    if len(text) <= limit:
        return text
    kept = parts[:1]  # a name is never cut in the middle, and the first one always shows
    for part in parts[1:]:
        rest = len(parts) - len(kept) - 1
        candidate = " + ".join([*kept, part]) + (f" + {rest} more" if rest else "")
        if len(candidate) > limit:
            break
        kept.append(part)
    return " + ".join(kept) + f" + {len(parts) - len(kept)} more"


def describe_batch(
    items: Sequence[tuple[Change | StreamAction, str]], limit: int = BATCH_ARGSREPR_MAX_LENGTH
) -> str:
    """What a task carries, for Flower's args column: each change as ``(label, pk, event,
    created)``, each action as ``(stream, args[, kwargs], action)``, in commit order::

        ('chat.message', 42, 'save', True); ('chat:RoomListStream', [], 'refresh')

    Beyond ``limit`` characters the remaining items are counted (``; and 12 more``).
    """
    parts = [
        repr((item.label, item.pk, item.event, item.created)) if isinstance(item, Change)
        else repr((item.stream_name, item.args, *([item.kwargs] if item.kwargs else []), item.action))
        for item, _ in items
    ]
    text = "; ".join(parts)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    length = 0
    for part in parts:
        if length + len(part) + 2 > limit - len("; and 99999 more"):
            break
        kept.append(part)
        length += len(part) + 2
    return "".join(part + "; " for part in kept) + f"and {len(parts) - len(kept)} more"


def schedule(
    name: str, args: Sequence[Any], shadow: str, countdown: float, committed: float | None = None
) -> None:
    """Queue the delayed task ``name`` (a debounced refresh) in ``countdown`` seconds, with the
    options of every broadcast (:func:`options`: queue, publish retries, Flower name) and the
    commit time ``committed`` of the change that caused it (now, when ``None``); raises what the
    broker raised."""
    app = conf.celery_app()
    headers = metrics.headers()
    if headers and committed is not None:
        headers = {"headers": {metrics.HEADER: committed}}
    app.tasks[name].apply_async(
        tuple(args), argsrepr=repr(tuple(args)), countdown=broker.countdown(app, max(countdown, 0.0)),
        **options(shadow, conf.get()), **headers,
    )


def run_here(item: Change | StreamAction, alias: str, *, throw: bool) -> None:
    """Run the task of ``item`` in this process (tests; ``ON_PUBLISH_ERROR="inline"``)."""
    name, args, kwargs = message([(item, alias)])
    conf.celery_app().tasks[name].apply(args, kwargs, throw=throw)


def failed(item: Change | StreamAction, alias: str, exc: BaseException) -> None:
    """Log a publish that could not be done, and run it here if ``ON_PUBLISH_ERROR`` says so."""
    logger.error(
        "could not queue the broadcast of %s: %s: %s; tried %s",
        item.describe(), type(exc).__name__, exc, describe_broker(),
    )
    metrics.publish_failed(dropped=conf.get().ON_PUBLISH_ERROR != "inline")
    if conf.get().ON_PUBLISH_ERROR == "inline":
        try:
            run_here(item, alias, throw=True)
        except Exception:
            logger.exception("inline broadcast of %s failed", item.describe())


def message(items: Sequence[tuple[Change | StreamAction, str]]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The task name, args and kwargs that carry ``items`` (JSON only): what the database
    outbox stores."""
    return BATCH_TASK, (to_payload(items),), {}


@lru_cache(maxsize=512)
def options(shadow: str, settings: conf.TurboAsyncSettings) -> dict[str, Any]:
    """The ``apply_async`` options of one hook or action, built once (this is the request path)."""
    built: dict[str, Any] = {
        "retry": True,
        "retry_policy": {
            "max_retries": settings.PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": settings.PUBLISH_RETRY_INTERVAL,
            "interval_max": settings.PUBLISH_RETRY_INTERVAL,
        },
    }
    if shadow:
        built["shadow"] = shadow
    if settings.QUEUE:
        built["queue"] = settings.QUEUE
    return built


def publishes_now() -> bool:
    """Whether a commit publishes by itself instead of handing over to the outbox thread: while
    a test records, in Celery's eager mode, and inside a task (a worker child may exit without
    running ``atexit``)."""
    app: Any = conf.celery_app()
    return bool(recording.active() or app.conf.task_always_eager or get_current_task() is not None)
