"""Layer 6, worker side: the bodies of the broadcast tasks.

:func:`broadcast_change` reloads a changed row (or rebuilds a deleted one from its snapshot), runs
its stream's hook, and delivers the frames the hook made: one ``group_send`` per stream.
:func:`perform_action` does the same for a ``stream.later`` action. Both return the small result
Flower shows (``{"frames": 2, "streams": 1}``). Callable without Celery.

Both run with the request id of the change bound (:func:`~turbo_async.changes.bound_request_id`),
so that a refresh carries it; a ``ModelStream`` whose ``Meta`` declares refreshes gets them after
its hook (or without one). :func:`send_refresh` is the body of the delayed task of a debounced
refresh (:mod:`turbo_async.refreshes`).
"""

from __future__ import annotations

import logging
import random
from typing import Any, NoReturn

from celery import Task
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DEFAULT_DB_ALIAS, models

from . import codec, conf, delivery, refreshes
from .changes import DELETE, SAVE, bound_request_id, rebuild
from .delivery import LAYER_ERRORS
from .exceptions import DeliveryError
from .frames import ACTIONS, REFRESH
from .registry import stream_registry
from .streams import CUSTOM, RAW, ModelStream

logger = logging.getLogger("turbo_async")

RECHECKS = 1
"""How many times a save broadcast re-runs its hook when the row changed while it was rendering
(bounded: a hook that writes to its own row would otherwise look changed every time)."""


def broadcast_change(
    label: str,
    pk: Any,
    event: str,
    created: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    snapshot: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Broadcast one committed change of the row ``label``/``pk`` (made by the Turbo request
    ``request_id``; ``None``: the one bound now, see :func:`~turbo_async.changes.bound_request_id`).

    Tasks of one row may run at the same time on several worker processes, so a save broadcast
    checks the row again after sending: if it was deleted meanwhile, the delete's ``remove`` may
    have gone out before this task's ``append``, so the ``on_delete`` frames are sent again; if it
    changed, the hook runs again on the new values (``RECHECKS`` times at most).
    """
    if request_id is None:
        return _broadcast_change(label, pk, event, created, using, snapshot)
    with bound_request_id(request_id):
        return _broadcast_change(label, pk, event, created, using, snapshot)


def _broadcast_change(
    label: str, pk: Any, event: str, created: bool, using: str, snapshot: dict[str, Any] | None
) -> dict[str, Any]:
    stream_class = stream_registry.get_model_stream(label)  # unknown labels are refused
    model: type[models.Model] = stream_class._meta.model
    try:
        pk = model._meta.pk.to_python(pk)
    except ValidationError as exc:
        raise ValueError(f"{label}: {pk!r} is not a valid primary key ({exc.messages[0]})") from None
    if event == DELETE:
        if not isinstance(snapshot, dict):
            raise ValueError(f"{label} pk={pk!r}: a delete needs the row's snapshot")
        return _run_hook(stream_class, rebuild(model, snapshot, using), DELETE, sender=model, using=using)
    if event != SAVE:
        raise ValueError(f"Unknown broadcast event {event!r}; expected 'save' or 'delete'.")

    instance = _load(model, pk, using)
    if instance is None:
        logger.debug("%s pk=%r is gone; nothing to broadcast", label, pk)
        return {"frames": 0, "streams": 0, "skipped": "row is gone"}
    result: dict[str, Any] = {"frames": 0, "streams": 0}
    for attempt in range(1 + RECHECKS):
        sent = _run_hook(stream_class, instance, SAVE, created=created, sender=model, using=using)
        _add(result, sent)
        if "skipped" in sent:
            return result
        now = _row_values(model, pk, using)  # one query, no model instance
        if now is None:
            if stream_class.hook(DELETE) is not None:
                logger.debug("%s pk=%r was deleted while broadcast; removing", label, pk)
                _add(result, _run_hook(stream_class, instance, DELETE, sender=model, using=using))
            return result
        if now == _values(instance) or attempt == RECHECKS:
            return result
        logger.debug("%s pk=%r changed while broadcast; again", label, pk)
        reloaded = _load(model, pk, using)
        if reloaded is None:  # deleted just now: its own delete task follows
            return result
        instance, created = reloaded, False
    return result


def _run_hook(
    stream_class: type[ModelStream[Any]], instance: models.Model, event: str, **kwargs: Any
) -> dict[str, Any]:
    """Run the hook of ``event`` and the refreshes ``Meta`` declares, collecting their frames,
    then deliver them."""
    with delivery.collect() as outgoing:
        try:
            stream = stream_class.from_instance(instance)
            if stream_class.hook(event) is not None:
                getattr(stream, stream_class.hooks[event])(instance, **kwargs)
            if stream_class.refreshes_declared():
                stream.refresh_declared(instance)
        except ObjectDoesNotExist as exc:
            # A related row went away (a cascade delete): a later task brings the page there.
            logger.info("%s pk=%r %s skipped: %s", instance._meta.label_lower, instance.pk, event, exc)
            return {"frames": 0, "streams": 0, "skipped": str(exc)}
    return _deliver(outgoing)


def perform_action(
    stream_name: str, args: list[Any], kwargs: dict[str, Any], action: str, options: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild the stream of a ``stream.later`` call and run its action here."""
    custom = bool(options.get(CUSTOM))
    if not custom and action not in (*ACTIONS, REFRESH, RAW):
        raise ValueError(f"Unknown stream action {action!r}.")
    stream = stream_registry.get_stream(stream_name)(*args, **kwargs)
    with bound_request_id(options.get("request_id")), delivery.collect() as outgoing:
        if action == RAW and not custom:
            stream.stream_raw(codec.decode(options.get("text")))
        else:
            stream._send_action(
                action,
                options.get("template"),
                codec.decode(options.get("context")),
                codec.decode(options.get("text")),
                options.get("selector"),
                options.get("id"),
                method=options.get("method"),
                attributes=options.get("attributes"),
                custom=custom,
            )
    return _deliver(outgoing)


class RefreshNotDelivered(DeliveryError):
    """The channel layer failed while sending a debounced refresh that was already decided:
    the retry sends it with ``request_id`` (the window in Redis is closed by then)."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


def send_refresh(group: str, stream_name: str, decided: str | None = None) -> dict[str, Any]:
    """The delayed task of a debounced refresh: send it if it is due (or ``decided``: a retry)."""
    request_id = decided if decided is not None else refreshes.fire(group, stream_name)
    if request_id is None:
        return {"frames": 0, "streams": 0, "skipped": "not due yet, or already sent"}
    try:
        refreshes.send(group, stream_name, request_id)
    except LAYER_ERRORS as exc:
        raise RefreshNotDelivered(str(exc), request_id) from exc
    return {"frames": 1, "streams": 1}


def _deliver(outgoing: delivery.Outgoing) -> dict[str, Any]:
    try:
        delivery.deliver(outgoing)
    except LAYER_ERRORS as exc:
        raise DeliveryError(str(exc)) from exc
    return {"frames": outgoing.frame_count, "streams": len(outgoing.frames)}


def _add(total: dict[str, Any], more: dict[str, Any]) -> None:
    total["frames"] += more["frames"]
    total["streams"] = max(total["streams"], more["streams"])
    if "skipped" in more:
        total["skipped"] = more["skipped"]


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


def retry(
    task: Task[Any, Any], exc: DeliveryError, what: str, kwargs: dict[str, Any] | None = None
) -> NoReturn:
    """Retry ``task`` with exponential backoff (raises Celery's ``Retry``), or, after
    ``DELIVERY_MAX_RETRIES`` retries, log and raise ``exc``. ``what`` names the broadcast;
    ``kwargs``, if given, replace the task's keyword arguments for the retry."""
    settings = conf.get()
    attempt = task.request.retries
    if attempt >= settings.DELIVERY_MAX_RETRIES:
        logger.error(
            "channel layer unreachable (%s); gave up on %s after %d retries",
            exc.__cause__ or exc, what, attempt,
        )
        raise exc
    countdown = min(settings.DELIVERY_RETRY_BACKOFF_MAX, 2**attempt) * random.uniform(0.5, 1.0)
    logger.warning(
        "channel layer unreachable (%s); %s retry %d of %d in %.1fs",
        exc.__cause__ or exc, what, attempt + 1, settings.DELIVERY_MAX_RETRIES, countdown,
    )
    raise task.retry(
        exc=exc, countdown=countdown, max_retries=settings.DELIVERY_MAX_RETRIES, kwargs=kwargs
    )
