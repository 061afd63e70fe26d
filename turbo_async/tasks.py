"""The broadcast tasks: publish on commit, then reload, run the hook, render and deliver.

One task per changed object carries ``(label, pk, event, created)`` and, for deletes, a snapshot of
the row. Flower shows it under its hook's name (``chat.MessageStream.on_save``) with a small
result (``{"frames": 2, "streams": 1}``).
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DEFAULT_DB_ALIAS, models

from . import conf, delivery
from .delivery import LAYER_ERRORS
from .pending import DELETE, SAVE, Change
from .registry import stream_registry

if TYPE_CHECKING:
    from .streams import ModelStream

logger = logging.getLogger("turbo_async")

class DeliveryError(Exception):
    """The channel layer could not be reached; the task is retried with backoff."""


@lru_cache(maxsize=256)
def publish_options(
    stream_class: type[ModelStream[Any]], event: str, settings: conf.TurboAsyncSettings
) -> dict[str, Any]:
    """The ``apply_async`` options of one hook, built once (``publish`` is on the request path)."""
    app_label = stream_class._meta.model._meta.app_label
    options: dict[str, Any] = {
        "shadow": f"{app_label}.{stream_class.__name__}.{'on_delete' if event == DELETE else 'on_save'}",
        "retry": True,
        "retry_policy": {
            "max_retries": settings.PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": settings.PUBLISH_RETRY_INTERVAL,
            "interval_max": settings.PUBLISH_RETRY_INTERVAL,
        },
    }
    if settings.QUEUE:
        options["queue"] = settings.QUEUE
    return options


def publish(change: Change, alias: str = DEFAULT_DB_ALIAS, producer: Any = None) -> None:
    """Queue the broadcast of one committed change. Never raises: a save must not fail because
    the broker is down; the failure is logged (and the hook run inline if configured so)."""
    if delivery.inline():  # inside turbo_async.testing's capture: the whole pipeline, here, now
        run(change.label, change.pk, change.event, change.created, alias, change.snapshot)
        return
    settings = conf.get()
    kwargs: dict[str, Any] = {}
    if alias != DEFAULT_DB_ALIAS:
        kwargs["using"] = alias
    if change.snapshot is not None:
        kwargs["snapshot"] = change.snapshot
    stream_class = stream_registry.get_model_stream(change.label)
    options = publish_options(stream_class, change.event, settings)  # type: ignore[arg-type]
    args = (change.label, change.pk, change.event, change.created)
    try:
        # argsrepr: Celery's default, saferepr(), costs a tenth of the publish; these are plain.
        broadcast.apply_async(args, kwargs, argsrepr=repr(args), producer=producer, **options)
    except Exception as exc:
        logger.error(
            "turbo_async: could not queue the broadcast of %s pk=%r (%s): %s: %s",
            change.label, change.pk, change.event, type(exc).__name__, exc,
        )
        if settings.ON_PUBLISH_ERROR == "inline":
            try:
                run(change.label, change.pk, change.event, change.created, alias, change.snapshot)
            except Exception:
                logger.exception(
                    "turbo_async: inline broadcast of %s pk=%r failed", change.label, change.pk
                )


# Both tasks: acknowledged after they ran (a killed worker's task is redelivered; tasks converge,
# so running one twice is harmless), results only in the task events Flower reads.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True, "acks_late": True, "reject_on_worker_lost": True, "ignore_result": True,
}


@shared_task(name="turbo_async.broadcast", **TASK_OPTIONS)
def broadcast(
    self: Task[Any, Any],
    label: str,
    pk: Any,
    event: str,
    created: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    snapshot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reload the row (or rebuild a deleted one), run its stream's hook, deliver the frames."""
    try:
        return run(label, pk, event, created, using, snapshot)
    except DeliveryError as exc:
        raise retry(self, exc, f"{label} pk={pk!r} ({event})") from exc.__cause__


def retry(task: Task[Any, Any], exc: DeliveryError, what: str) -> BaseException:
    """Retry ``task`` with exponential backoff, or give up (return ``exc`` to raise) after
    ``DELIVERY_MAX_RETRIES`` retries. Each attempt is logged with ``what`` (label and pk)."""
    settings = conf.get()
    attempt = task.request.retries
    if attempt >= settings.DELIVERY_MAX_RETRIES:
        logger.error(
            "turbo_async: channel layer unreachable (%s); gave up on %s after %d retries",
            exc.__cause__ or exc, what, attempt,
        )
        return exc
    countdown = min(settings.DELIVERY_RETRY_BACKOFF_MAX, 2**attempt) * random.uniform(0.5, 1.0)
    logger.warning(
        "turbo_async: channel layer unreachable (%s); %s retry %d of %d in %.1fs",
        exc.__cause__ or exc, what, attempt + 1, settings.DELIVERY_MAX_RETRIES, countdown,
    )
    return task.retry(exc=exc, countdown=countdown, max_retries=settings.DELIVERY_MAX_RETRIES)


RECHECKS = 1
"""How many times a save task re-runs its hook when the row changed while it was rendering
(bounded: a hook that writes to its own row would otherwise look changed every time)."""


def run(
    label: str,
    pk: Any,
    event: str,
    created: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    snapshot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of a broadcast, callable without Celery (``ON_PUBLISH_ERROR="inline"``, tests).

    Tasks of one row may run at the same time on several worker processes, so a save task
    checks the row again after sending: if it was deleted meanwhile, the delete's ``remove`` may
    have gone out before this task's ``append``, so the ``on_delete`` frames are sent again; if it
    changed, the hook runs again on the new values (``RECHECKS`` times at most).
    """
    stream_class = stream_registry.get_model_stream(label)  # unknown labels are refused
    model: type[models.Model] = stream_class._meta.model
    try:
        pk = model._meta.pk.to_python(pk)
    except ValidationError as exc:
        raise ValueError(f"{label}: {pk!r} is not a valid primary key ({exc.messages[0]})") from None
    if event == DELETE:
        if not isinstance(snapshot, dict):
            raise ValueError(f"{label} pk={pk!r}: a delete needs the row's snapshot")
        deleted = rebuild(model, snapshot, using)
        return _broadcast(stream_class, deleted, "on_delete", sender=model, using=using)
    if event != SAVE:
        raise ValueError(f"Unknown broadcast event {event!r}; expected 'save' or 'delete'.")

    loaded = _load(model, pk, using)
    if loaded is None:
        logger.debug("turbo_async: %s pk=%r is gone; nothing to broadcast", label, pk)
        return {"frames": 0, "streams": 0, "skipped": "row is gone"}
    instance, result = loaded, {"frames": 0, "streams": 0}
    for attempt in range(1 + RECHECKS):
        sent = _broadcast(stream_class, instance, "on_save", created=created, sender=model, using=using)
        _add(result, sent)
        if "skipped" in sent:
            return sent
        now = _row_values(model, pk, using)  # one query, no model instance
        if now is None:
            if callable(getattr(stream_class, "on_delete", None)):
                logger.debug("turbo_async: %s pk=%r was deleted while broadcast; removing", label, pk)
                _add(result, _broadcast(stream_class, instance, "on_delete", sender=model, using=using))
            return result
        if now == _values(instance) or attempt == RECHECKS:
            return result
        logger.debug("turbo_async: %s pk=%r changed while broadcast; again", label, pk)
        reloaded = _load(model, pk, using)
        if reloaded is None:  # deleted just now: its own delete task follows
            return result
        instance, created = reloaded, False
    return result


def _broadcast(
    stream_class: type[ModelStream[Any]], instance: models.Model, hook: str, **kwargs: Any
) -> dict[str, Any]:
    """Run one hook, collecting its frames, then send them: one ``group_send`` per stream."""
    with delivery.collect() as batch:
        try:
            getattr(stream_class.from_instance(instance), hook)(instance, **kwargs)
        except ObjectDoesNotExist as exc:
            # A related row went away (a cascade delete): a later task brings the page there.
            logger.info(
                "turbo_async: %s pk=%r %s skipped: %s",
                instance._meta.label_lower, instance.pk, hook.removeprefix("on_"), exc,
            )
            return {"frames": 0, "streams": 0, "skipped": str(exc)}
    return _send(batch)


def _send(batch: delivery.Batch) -> dict[str, Any]:
    """Send collected frames (one ``group_send`` per stream) and say how many went out."""
    try:
        delivery.flush(batch)
    except LAYER_ERRORS as exc:
        raise DeliveryError(str(exc)) from exc
    return {"frames": batch.frame_count, "streams": len(batch.frames)}


def _add(total: dict[str, Any], more: dict[str, Any]) -> None:
    total["frames"] += more["frames"]
    total["streams"] = max(total["streams"], more["streams"])


def _load(model: type[models.Model], pk: Any, using: str) -> models.Model | None:
    try:
        return model._base_manager.using(using).get(pk=pk)
    except model.DoesNotExist:  # type: ignore[attr-defined]
        return None


def _row_values(model: type[models.Model], pk: Any, using: str) -> tuple[Any, ...] | None:
    attnames = [f.attname for f in model._meta.concrete_fields]
    rows = model._base_manager.using(using).filter(pk=pk).order_by().values_list(*attnames)[:1]
    return next(iter(rows), None)


def _values(instance: models.Model) -> tuple[Any, ...]:
    return tuple(f.value_from_object(instance) for f in instance._meta.concrete_fields)


def rebuild(model: type[models.Model], snapshot: dict[str, Any], using: str) -> models.Model:
    """An unsaved instance with the deleted row's values, so ``message.room`` still works."""
    values = {
        f.attname: f.to_python(snapshot[f.attname])
        for f in model._meta.concrete_fields
        if f.attname in snapshot
    }
    instance = model(**values)
    instance._state.adding = False
    instance._state.db = using
    return instance


@shared_task(name="turbo_async.stream_action", **TASK_OPTIONS)
def stream_action(
    self: Task[Any, Any],
    stream_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    action: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run ``stream.later.<action>(...)`` in a worker (see :mod:`turbo_async.later`)."""
    from .later import perform

    with delivery.collect() as batch:
        perform(stream_name, args, kwargs, action, options)
    try:
        return _send(batch)
    except DeliveryError as exc:
        raise retry(self, exc, f"{stream_name}.{action}") from exc.__cause__
