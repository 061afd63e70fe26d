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
import time
from typing import Any, NoReturn

from celery import Task
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DEFAULT_DB_ALIAS, models

from . import broker, codec, conf, delivery, history, metrics, refreshes
from .changes import DELETE, SAVE, bound_request_id, rebuild
from .exceptions import DeliveryError
from .frames import ACTIONS, REFRESH
from .layers import LAYER_ERRORS
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


class BatchHookError(Exception):
    """Hooks of a batch raised; the others' frames were delivered. Fails the task (Flower)."""


def broadcast_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Broadcast several committed changes and ``stream.later`` actions, in commit order.

    The rows of each model are loaded with one query; every frame the hooks make is collected
    and goes out as one ``group_send`` per stream for the whole batch (one WebSocket message with
    several ``<turbo-stream>`` elements, applied in order by Turbo). A hook that raises does not
    keep the others' frames back: they are delivered, then the task fails with
    :class:`BatchHookError` naming each failure (each also logged with its traceback). As for
    one change, the saved rows are read again after sending, and a row deleted or changed
    meanwhile gets its ``on_delete`` frames or one more ``on_save``.
    """
    loaded = _load_rows(items)
    failures: list[str] = []
    saved: list[tuple[type[ModelStream[Any]], models.Model, str]] = []
    with delivery.collect() as outgoing:
        for item in items:
            what = _describe(item)
            try:
                if "stream" in item:
                    _act(item)
                    continue
                with bound_request_id(item.get("request_id")):  # the refreshes it causes carry it
                    _broadcast_item(item, what, loaded, saved)
            except ObjectDoesNotExist as exc:  # as for one change: a later task brings the page there
                if "stream" in item:
                    logger.info("%s skipped: %s", what, exc)
                else:
                    logger.info("%s pk=%r %s skipped: %s", item["label"], item["pk"], item["event"], exc)
            except Exception as exc:
                logger.exception("the hook of %s failed in a batch of %d", what, len(items))
                metrics.hook_failed()
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
    result = _deliver(outgoing)
    _add(result, _recheck(saved))
    result["changes"] = len(items)
    if failures:
        raise BatchHookError(
            f"{len(failures)} of {len(items)} broadcasts of this batch failed (the others' "
            f"{result['frames']} frames were delivered): " + "; ".join(failures)
        )
    return result


def _broadcast_item(
    item: dict[str, Any],
    what: str,
    loaded: dict[tuple[str, str], dict[Any, models.Model]],
    saved: list[tuple[type[ModelStream[Any]], models.Model, str]],
) -> None:
    """One change of a batch: its hook runs with the batch's frames being collected."""
    stream_class = stream_registry.get_model_stream(item["label"])
    model = stream_class._meta.model
    using = item.get("using", DEFAULT_DB_ALIAS)
    if item["event"] == DELETE:
        if not isinstance(item.get("snapshot"), dict):
            raise ValueError(f"{what}: a delete needs the row's snapshot")
        _hook(stream_class, rebuild(model, item["snapshot"], using), DELETE, sender=model, using=using)
        return
    if item["event"] != SAVE:
        raise ValueError(f"Unknown broadcast event {item['event']!r}; expected 'save' or 'delete'.")
    instance = loaded.get((item["label"], using), {}).get(_python_pk(model, item["pk"]))
    if instance is None:  # worded as for one change
        logger.debug("%s pk=%r is gone; nothing to broadcast", item["label"], item["pk"])
        return
    _hook(stream_class, instance, SAVE, created=bool(item.get("created")), sender=model, using=using)
    saved.append((stream_class, instance, using))


def _describe(item: dict[str, Any]) -> str:
    if "stream" in item:
        return f"{item['stream']}.{item.get('action')}"
    return f"{item.get('label')} pk={item.get('pk')!r} ({item.get('event')})"


def _python_pk(model: type[models.Model], pk: Any) -> Any:
    try:
        return model._meta.pk.to_python(pk)
    except ValidationError:
        return None


def _load_rows(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[Any, models.Model]]:
    """The saved rows of a batch: one query per model and database."""
    wanted: dict[tuple[str, str], set[Any]] = {}
    for item in items:
        if item.get("event") == SAVE and "label" in item:
            wanted.setdefault((item["label"], item.get("using", DEFAULT_DB_ALIAS)), set()).add(item["pk"])
    loaded: dict[tuple[str, str], dict[Any, models.Model]] = {}
    for (label, using), pks in wanted.items():
        try:
            model = stream_registry.get_model_stream(label)._meta.model
        except LookupError:
            continue  # refused item by item, with its own error
        keys = [key for key in (_python_pk(model, pk) for pk in pks) if key is not None]
        loaded[(label, using)] = model._base_manager.using(using).in_bulk(keys)
    return loaded


def _hook(stream_class: type[ModelStream[Any]], instance: models.Model, event: str, **kwargs: Any) -> None:
    """The hook of ``event``, if the stream has one, then the refreshes its ``Meta`` declares."""
    stream = stream_class.from_instance(instance)
    if stream_class.hook(event) is not None:
        getattr(stream, stream_class.hooks[event])(instance, **kwargs)
    if stream_class.refreshes_declared():
        stream.refresh_declared(instance)


def _recheck(saved: list[tuple[type[ModelStream[Any]], models.Model, str]]) -> dict[str, Any]:
    """Read the saved rows again (one query per model): frames for what changed meanwhile."""
    by_model: dict[tuple[type[ModelStream[Any]], str], list[models.Model]] = {}
    for stream_class, instance, using in saved:
        by_model.setdefault((stream_class, using), []).append(instance)
    with delivery.collect() as outgoing:
        for (stream_class, using), instances in by_model.items():
            model = stream_class._meta.model
            attnames = [f.attname for f in model._meta.concrete_fields]
            rows = model._base_manager.using(using).filter(pk__in=[i.pk for i in instances]).order_by()
            now = {values[attnames.index(model._meta.pk.attname)]: values for values in rows.values_list(*attnames)}
            for instance in {i.pk: i for i in instances}.values():
                try:
                    current = now.get(instance.pk)
                    if current is None:
                        if stream_class.hook(DELETE) is not None:
                            _hook(stream_class, instance, DELETE, sender=model, using=using)
                    elif current != _values(instance):
                        reloaded = _load(model, instance.pk, using)
                        if reloaded is not None:
                            _hook(stream_class, reloaded, SAVE, created=False, sender=model, using=using)
                except Exception:  # the first pass already reported this row's hook
                    logger.exception("re-checking %s pk=%r failed", model._meta.label_lower, instance.pk)
    return _deliver(outgoing)


def _act(item: dict[str, Any]) -> None:
    """Run one ``stream.later`` action here (with the request id it was made under)."""
    action = str(item.get("action"))
    options = item.get("options") or {}
    custom = bool(options.get(CUSTOM))
    if not custom and action not in (*ACTIONS, REFRESH, RAW):
        raise ValueError(f"Unknown stream action {action!r}.")
    stream = stream_registry.get_stream(item["stream"])(*item.get("args", []), **item.get("kwargs", {}))
    with bound_request_id(options.get("request_id")):
        if action == RAW and not custom:
            stream.stream_raw(codec.decode(options.get("text")))
            return
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
    with delivery.collect() as outgoing:
        _act({"stream": stream_name, "args": args, "kwargs": kwargs, "action": action, "options": options})
    return _deliver(outgoing)


class RefreshNotDelivered(DeliveryError):
    """The channel layer failed while sending a debounced refresh that was already decided:
    the retry sends it with ``request_id`` (the window in Redis is closed by then)."""

    def __init__(self, message: str, request_id: str, streams: dict[str, str] | None = None) -> None:
        super().__init__(message, streams)
        self.request_id = request_id


def send_refresh(group: str, stream_name: str, decided: str | None = None) -> dict[str, Any]:
    """The delayed task of a debounced refresh: send it if it is due (or ``decided``: a retry)."""
    request_id = decided if decided is not None else refreshes.fire(group, stream_name)
    if request_id is None:
        return {"frames": 0, "streams": 0, "skipped": "not due yet, or already sent"}
    try:
        refreshes.send(group, stream_name, request_id)
    except LAYER_ERRORS as exc:
        raise RefreshNotDelivered(str(exc), request_id, {group: stream_name}) from exc
    return {"frames": 1, "streams": 1}


def _deliver(outgoing: delivery.Outgoing) -> dict[str, Any]:
    try:
        dropped = delivery.deliver(outgoing)
    except delivery.NotDelivered as exc:
        raise DeliveryError(str(exc.error), exc.streams) from exc.error
    result: dict[str, Any] = {"frames": outgoing.frame_count, "streams": len(outgoing.frames)}
    if dropped:
        # Flower shows it: batches the layer dropped for full web processes (logged at WARNING).
        result["dropped"] = dropped
    return result


def _add(total: dict[str, Any], more: dict[str, Any]) -> None:
    total["frames"] += more["frames"]
    total["streams"] = max(total["streams"], more["streams"])
    if more.get("dropped"):
        total["dropped"] = total.get("dropped", 0) + more["dropped"]
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
    """Retry ``task`` with exponential backoff (raises Celery's ``Retry``) while the channel layer
    cannot be reached. ``what`` names the broadcast; ``kwargs``, if given, are added to the task's
    keyword arguments for the retry.

    The retry carries ``failing_since``, the time of the first failure, and ``groups``, those whose
    frames failed (the other streams' frames went out and are not sent again): its frames are sent late
    only if their streams sent nothing else meanwhile (:func:`~turbo_async.delivery.waited_since`).
    Once the first failure is ``DELIVERY_MAX_AGE`` seconds old (or after ``DELIVERY_MAX_RETRIES``
    retries, when set), the frames are given up, logged at ERROR, and the task is retried with
    ``stale``, the streams whose pages must refresh (:func:`refresh_stale`), until the layer
    answers."""
    settings = conf.get()
    request = task.request
    now = time.time()
    previous: dict[str, Any] = dict(request.kwargs or {})
    since = previous.get("failing_since")
    if not isinstance(since, (int, float)) or isinstance(since, bool):
        since = now
    attempt = request.retries
    options = {**previous, **(kwargs or {}), "failing_since": since}
    if exc.streams:
        options["groups"] = sorted(exc.streams)  # the retry sends these only; the others went out
    countdown = min(settings.DELIVERY_RETRY_BACKOFF_MAX, 2 ** min(attempt, 16)) * random.uniform(0.5, 1.0)
    countdown = broker.countdown(conf.celery_app(), countdown)  # whole seconds on RabbitMQ quorum queues
    cause = exc.__cause__ or exc
    if previous.get("stale"):
        if now - since > history.EPOCH_TTL:  # the streams' positions have expired by now
            logger.error("channel layer unreachable (%s); gave up refreshing the pages of %s", cause, what)
            raise exc
        logger.info("channel layer unreachable (%s); the refresh of %s is retried in %.1fs", cause, what, countdown)
        raise task.retry(exc=exc, countdown=countdown, kwargs=options)
    limit = settings.DELIVERY_MAX_RETRIES
    if now - since + countdown > settings.DELIVERY_MAX_AGE or (limit is not None and attempt >= limit):
        if not exc.streams:
            logger.error("channel layer unreachable (%s); gave up on %s after %d retries (%.0f s)",
                         cause, what, attempt, now - since)
            raise exc
        logger.error(
            "channel layer unreachable (%s); gave up on the frames of %s after %d retries (%.0f s, "
            "DELIVERY_MAX_AGE %.0f s): the pages of %s refresh as soon as the layer answers",
            cause, what, attempt, now - since, settings.DELIVERY_MAX_AGE, ", ".join(sorted(exc.streams.values())),
        )
        options["stale"] = sorted([group, name] for group, name in exc.streams.items())
        raise task.retry(exc=exc, countdown=countdown, kwargs=options)
    logger.log(
        logging.WARNING if attempt == 0 else logging.INFO,
        "channel layer unreachable (%s); %s retry %d in %.1fs (retried until %.0f s after the first "
        "failure, then its pages refresh)",
        cause, what, attempt + 1, countdown, settings.DELIVERY_MAX_AGE,
    )
    raise task.retry(exc=exc, countdown=countdown, kwargs=options)


def refresh_stale(stale: list[list[str]], failing_since: float | None) -> dict[str, Any]:
    """Make the pages of each ``[group, stream name]`` in ``stale`` refresh: their frames were given
    up after ``DELIVERY_MAX_AGE`` (:func:`retry`). Raises :class:`DeliveryError` naming the streams
    still waiting when the layer cannot be reached."""
    left: dict[str, str] = {}
    error: BaseException | None = None
    for group, stream_name in stale:
        try:
            position = delivery.mark_stale(group, stream_name)
        except LAYER_ERRORS as exc:
            left[group], error = stream_name, exc
            continue
        waited = f"{time.time() - failing_since:.0f} s" if failing_since else "too long"
        logger.warning(
            "frames of %s were lost (the channel layer was unreachable for %s); its pages were told "
            "to refresh (%s)", stream_name, waited, f"new epoch {position.epoch}" if position else "refresh frame",
        )
    if left:
        raise DeliveryError(str(error), left) from error
    return {"frames": len(stale), "streams": len(stale), "refreshed": len(stale)}
