"""Layer 3, request side: queue the Celery task of one committed change or ``stream.later`` action.

The tasks are addressed by name (``turbo_async.broadcast``, ``turbo_async.stream_action``) through
the process's Celery app, as Celery producers do: the request side never imports the worker code.
Each item carries its Flower name (``shadow``), bound once when its stream was registered, so
publishing never looks anything up in the stream registry.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery._state import get_current_task
from django.db import DEFAULT_DB_ALIAS

from . import conf, recording
from .changes import BROADCAST_TASK, STREAM_ACTION_TASK, Change, StreamAction

logger = logging.getLogger("turbo_async")


def publish(item: Change | StreamAction, alias: str = DEFAULT_DB_ALIAS, producer: Any = None) -> None:
    """Queue the broadcast of one committed item.

    Never raises for a broker failure: a save must not fail because the broker is down; the
    failure is logged (and the broadcast run in this process if ``ON_PUBLISH_ERROR`` is
    ``"inline"``). While a test records broadcasts the task runs here, now, and a hook's exception
    reaches the test.
    """
    name, args, kwargs = message(item, alias)
    if recording.active():
        conf.celery_app().tasks[name].apply(args, kwargs, throw=True)
        return
    settings = conf.get()
    try:
        task = conf.celery_app().tasks[name]
        # argsrepr: Celery's default, saferepr(), costs a tenth of the publish; these are plain.
        task.apply_async(args, kwargs, argsrepr=repr(args), producer=producer, **options(item.shadow, settings))
    except Exception as exc:
        logger.error(
            "could not queue the broadcast of %s: %s: %s", item.describe(), type(exc).__name__, exc
        )
        if settings.ON_PUBLISH_ERROR == "inline":
            try:
                conf.celery_app().tasks[name].apply(args, kwargs, throw=True)
            except Exception:
                logger.exception("inline broadcast of %s failed", item.describe())


def message(item: Change | StreamAction, alias: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The task name, args and kwargs that carry ``item`` (JSON only)."""
    if isinstance(item, StreamAction):
        return STREAM_ACTION_TASK, (item.stream_name, item.args, item.kwargs, item.action, item.options), {}
    kwargs: dict[str, Any] = {}
    if alias != DEFAULT_DB_ALIAS:
        kwargs["using"] = alias
    if item.snapshot is not None:
        kwargs["snapshot"] = item.snapshot
    return BROADCAST_TASK, (item.label, item.pk, item.event, item.created), kwargs


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
