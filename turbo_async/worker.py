"""Layer 6, worker side: the bodies of the broadcast tasks.

:func:`broadcast` is the one path of every broadcast: the items of one task (changes and
``stream.later`` actions, in commit order, read with :func:`~turbo_async.changes.from_payload`; a
single change is a batch of one). It reloads each changed row (or rebuilds a deleted one from its
snapshot), runs its stream's hook, makes each action through the stream's public
:meth:`~turbo_async.Stream.broadcast_action`, and delivers the frames: one ``group_send`` per
stream. It returns the small result Flower shows (``{"frames": 2, "streams": 1, "changes": 1}``).
Callable without Celery.

Each item runs with the request id it carries bound (:func:`~turbo_async.changes.bound_request_id`),
so that a refresh carries it; a ``ModelStream`` whose ``Meta`` declares refreshes gets them after
its hook (or without one). :func:`send_refresh` is the body of the delayed task of a debounced
refresh (:mod:`turbo_async.refreshes`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from celery import Task
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DEFAULT_DB_ALIAS, models

from . import broker, codec, conf, delivery, history, metrics, refreshes
from .changes import DELETE, SAVE, Change, Item, StreamAction, bound_request_id, from_payload, rebuild
from .exceptions import BatchHookError, DeliveryError
from .layers import LAYER_ERRORS
from .registry import stream_registry
from .streams import CUSTOM, RAW, ModelStream

logger = logging.getLogger("turbo_async")

__all__ = ["BatchHookError", "broadcast", "broadcast_change", "refresh_stale", "retry", "send_refresh"]

Saved = list[tuple[type[ModelStream[Any]], models.Model, str]]
"""The rows a broadcast ran ``on_save`` for, read again after sending (:func:`_recheck`)."""


def broadcast(payload: Sequence[Any]) -> dict[str, Any]:
    """Broadcast the items of one task (``to_payload`` of changes and actions), in commit order.

    The rows of each model are loaded with one query; every frame the hooks make is collected
    and goes out as one ``group_send`` per stream for the whole task (one WebSocket message with
    several ``<turbo-stream>`` elements, applied in order by Turbo). Tasks of one row may run at
    the same time on several worker processes, so the saved rows are read again after sending:
    a row deleted meanwhile gets its ``on_delete`` frames (the delete's ``remove`` may have gone
    out before this ``append``), a changed one one more ``on_save``.

    A row gone before the task ran, or a related row a hook reaches gone (a cascade), is skipped
    (``"skipped"`` in the result says why). A hook that raises sends nothing of its own and does
    not keep the other items' frames back: they are delivered, then the task fails, with the
    hook's own exception when it was the only item, else with :class:`BatchHookError` naming each
    failure (each also logged with its traceback). An item that cannot be read
    (:class:`~turbo_async.exceptions.PayloadError`, an unknown label) fails the same way.
    """
    lone = len(payload) == 1
    decoded: list[tuple[Item, str] | Exception] = [_decode(data) for data in payload]
    loaded = _load_rows([entry for entry in decoded if not isinstance(entry, Exception)])
    failures: list[str] = []
    saved: Saved = []
    skipped: list[str] = []
    with delivery.collect() as outgoing:
        for data, entry in zip(payload, decoded, strict=True):
            what = _describe(entry, data)
            try:
                if isinstance(entry, Exception):
                    raise entry
                with delivery.collect() as own:  # a hook that raises sends nothing of its own
                    with bound_request_id(entry[0].request_id):  # the refreshes it causes carry it
                        skipped += _apply(entry[0], entry[1], loaded, saved)
                _merge(outgoing, own)
            except ObjectDoesNotExist as exc:  # a later task brings the page there
                logger.info("%s skipped: %s", _skipped(entry, what), exc)
                skipped.append(str(exc))
            except Exception as exc:
                if lone:  # the task fails with it; Celery's task_failure signal counts it
                    raise
                metrics.hook_failed()
                logger.exception("the hook of %s failed in a batch of %d", what, len(payload))
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
    result = _deliver(outgoing)
    if skipped:
        result["skipped"] = skipped[-1]
    _add(result, _recheck(saved))
    result["changes"] = len(payload)
    if failures:
        raise BatchHookError(
            f"{len(failures)} of {len(payload)} broadcasts of this batch failed (the others' "
            f"{result['frames']} frames were delivered): " + "; ".join(failures)
        )
    return result


def broadcast_change(
    label: str,
    pk: Any,
    event: str,
    created: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    snapshot: dict[str, Any] | None = None,
    request_id: str = "",
) -> dict[str, Any]:
    """Broadcast one committed change of the row ``label``/``pk``, as a task of one item does
    (:func:`broadcast`); for tests and benchmarks::

        worker.broadcast_change("chat.message", 42, "save", created=True)
    """
    change = Change(label, pk, event, created, snapshot, request_id=request_id)
    return broadcast([change.to_payload(using)])


def _decode(data: Any) -> tuple[Item, str] | Exception:
    try:
        return from_payload(data)
    except Exception as exc:  # reported as that item's failure, in order
        return exc


def _apply(item: Item, using: str, loaded: dict[tuple[str, str], dict[Any, models.Model]], saved: Saved) -> list[str]:
    """Run one item with the task's frames being collected; returns why it was skipped, if it was."""
    if isinstance(item, StreamAction):
        _act(item)
        return []
    stream_class = stream_registry.get_model_stream(item.label)  # unknown labels are refused
    model = stream_class._meta.model
    pk = _python_pk(model, item.label, item.pk)
    if item.event == DELETE:
        if not isinstance(item.snapshot, dict):
            raise ValueError(f"{item.label} pk={pk!r}: a delete needs the row's snapshot")
        _hook(stream_class, rebuild(model, item.snapshot, using), DELETE, sender=model, using=using)
        return []
    instance = loaded.get((item.label, using), {}).get(pk)
    if instance is None:
        logger.debug("%s pk=%r is gone; nothing to broadcast", item.label, item.pk)
        return ["row is gone"]
    _hook(stream_class, instance, SAVE, created=item.created, sender=model, using=using)
    saved.append((stream_class, instance, using))
    return []


def _act(action: StreamAction) -> None:
    """``stream.later.<action>(...)``, made here: the stream's own call with the same keywords."""
    stream = stream_registry.get_stream(action.stream_name)(*action.args, **action.kwargs)
    options = codec.decode(action.options)
    if action.action == RAW and not options.get(CUSTOM):
        stream.stream_raw(options.get("text") or "")
        return
    stream.broadcast_action(action.action, **options)


def _merge(into: delivery.Outgoing, more: delivery.Outgoing) -> None:
    for group, frames in more.frames.items():
        for markup in frames:
            into.add(group, more.stream_names[group], markup)


def _describe(entry: tuple[Item, str] | Exception, data: Any) -> str:
    if not isinstance(entry, Exception):
        return entry[0].describe()
    if isinstance(data, dict) and "stream" in data:
        return f"{data['stream']}.{data.get('action')}"
    if isinstance(data, dict):
        return f"{data.get('label')} pk={data.get('pk')!r} ({data.get('event')})"
    return repr(data)[:100]


def _skipped(entry: tuple[Item, str] | Exception, what: str) -> str:
    """A skipped item for its log line: ``chat.message pk=5 delete`` (as 0.1.0 wrote it)."""
    if isinstance(entry, tuple) and isinstance(entry[0], Change):
        return f"{entry[0].label} pk={entry[0].pk!r} {entry[0].event}"
    return what


def _python_pk(model: type[models.Model], label: str, pk: Any) -> Any:
    try:
        return model._meta.pk.to_python(pk)
    except ValidationError as exc:
        raise ValueError(f"{label}: {pk!r} is not a valid primary key ({exc.messages[0]})") from None


def _load_rows(items: list[tuple[Item, str]]) -> dict[tuple[str, str], dict[Any, models.Model]]:
    """The saved rows of a task: one query per model and database."""
    wanted: dict[tuple[str, str], set[Any]] = {}
    for item, using in items:
        if isinstance(item, Change) and item.event == SAVE:
            wanted.setdefault((item.label, using), set()).add(item.pk)
    loaded: dict[tuple[str, str], dict[Any, models.Model]] = {}
    for (label, using), pks in wanted.items():
        try:
            model = stream_registry.get_model_stream(label)._meta.model
        except LookupError:
            continue  # refused item by item, with its own error
        keys = []
        for pk in pks:
            try:
                keys.append(_python_pk(model, label, pk))
            except ValueError:
                continue  # refused item by item, with its own error
        loaded[(label, using)] = {row.pk: row for row in _rows(model, using, keys)}
    return loaded


def _rows(model: type[models.Model], using: str, pks: list[Any]) -> models.QuerySet[Any]:
    """The rows of ``pks``, in no order. One key (a lone change, the most common task) is a
    ``pk=`` lookup: with ``in_bulk`` and ``pk__in`` the lone change's path made 14% more Python
    calls (cProfile over 200 changes, 2026-12-07), all in Django's query compilation."""
    rows = model._base_manager.using(using)
    return (rows.filter(pk=pks[0]) if len(pks) == 1 else rows.filter(pk__in=pks)).order_by()


def _hook(stream_class: type[ModelStream[Any]], instance: models.Model, event: str, **kwargs: Any) -> None:
    """The hook of ``event``, if the stream has one, then the refreshes its ``Meta`` declares."""
    stream = stream_class.from_instance(instance)
    if stream_class.hook(event) is not None:
        getattr(stream, stream_class.hooks[event])(instance, **kwargs)
    if stream_class.refreshes_declared():
        stream.refresh_declared(instance)


def _recheck(saved: Saved) -> dict[str, Any]:
    """Read the saved rows again (one query per model): frames for what changed meanwhile."""
    by_model: dict[tuple[type[ModelStream[Any]], str], list[models.Model]] = {}
    for stream_class, instance, using in saved:
        by_model.setdefault((stream_class, using), []).append(instance)
    skipped = ""
    with delivery.collect() as outgoing:
        for (stream_class, using), instances in by_model.items():
            model = stream_class._meta.model
            attnames = [f.attname for f in model._meta.concrete_fields]
            rows = _rows(model, using, [i.pk for i in instances])
            now = {values[attnames.index(model._meta.pk.attname)]: values for values in rows.values_list(*attnames)}
            for instance in {i.pk: i for i in instances}.values():
                what = f"{model._meta.label_lower} pk={instance.pk!r}"
                try:
                    with delivery.collect() as own:
                        current = now.get(instance.pk)
                        if current is None:
                            if stream_class.hook(DELETE) is not None:
                                logger.debug("%s was deleted while broadcast; removing", what)
                                _hook(stream_class, instance, DELETE, sender=model, using=using)
                        elif current != _values(instance):
                            logger.debug("%s changed while broadcast; again", what)
                            reloaded = _load(model, instance.pk, using)
                            if reloaded is not None:  # else deleted just now: its own task follows
                                _hook(stream_class, reloaded, SAVE, created=False, sender=model, using=using)
                    _merge(outgoing, own)
                except ObjectDoesNotExist as exc:
                    logger.info("re-checking %s skipped: %s", what, exc)
                    skipped = str(exc)
                except Exception:  # the first pass already reported this row's hook
                    logger.exception("re-checking %s failed", what)
    result: dict[str, Any] = _deliver(outgoing) if outgoing.frames else {"frames": 0, "streams": 0}  # mostly unchanged
    if skipped:
        result["skipped"] = skipped
    return result


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
