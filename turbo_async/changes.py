"""Layer 0 (a leaf): what one committed change carries to a worker, JSON only: the wire format.

A :class:`Change` is a row's ``(label, pk, event, created)`` plus, for a delete, a snapshot of the
row's concrete field values (a deleted row cannot be reloaded); :func:`rebuild` turns a snapshot
back into an unsaved instance in the worker. A :class:`StreamAction` is one explicit
``stream.later.<action>(...)`` call. Both also carry ``shadow``, the name Flower shows for the task;
it travels as Celery's task option, not in the payload.

Every broadcast is one task, ``turbo_async.batch``, whose one argument is a list of items in commit
order (a single change is a batch of one). Each item is ``item.to_payload(using)``, a JSON object
with ``"v": 2`` (:data:`WIRE_VERSION`), and :func:`from_payload` reads it back: this module is the
one place that defines what goes on the wire. Items without ``"v"`` are 0.1.0's batch items, and
:func:`payload_of_message` turns 0.1.0's one-change tasks (``turbo_async.broadcast``,
``turbo_async.stream_action``, positional arguments) into items: both are read until 0.3.0, so
messages queued in the broker and outbox rows written by 0.1.0 still go out after an upgrade.

A change made during a request that Turbo sent with ``X-Turbo-Request-Id``
(:mod:`turbo_async.middleware`) also carries that id, so that the refresh it causes carries it
too: :func:`bound_request_id` sets it for a block (the request, or the worker's task) and
:func:`current_request_id` reads it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import DEFAULT_DB_ALIAS, models

from .exceptions import PayloadError

SAVE = "save"
DELETE = "delete"

BATCH_TASK = "turbo_async.batch"
"""The Celery task of every broadcast: changes and actions in commit order, one or several
(declared in :mod:`turbo_async.tasks`)."""
WIRE_VERSION = 2
"""The ``"v"`` of every item this version sends. A worker refuses an item of a later version
(:class:`~turbo_async.exceptions.PayloadError`) instead of guessing at it."""

# Compatibility with 0.1.0's messages: remove in 0.3.0 (with payload_of_message, version 1 in
# _validate_version, and the tasks of these names in turbo_async.tasks).
BROADCAST_TASK = "turbo_async.broadcast"
"""0.1.0's task of one :class:`Change`, ``(label, pk, event, created)``; read until 0.3.0."""
STREAM_ACTION_TASK = "turbo_async.stream_action"
"""0.1.0's task of one :class:`StreamAction`, ``(stream, args, kwargs, action, options)``; read
until 0.3.0."""

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("turbo_async_request_id", default="")


def current_request_id() -> str:
    """The Turbo request id of the request (or the task) running now; ``""`` when there is none."""
    return _request_id.get()


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Make ``request_id`` the current one inside the block (``None`` or ``""``: none)."""
    token = _request_id.set(request_id or "")
    try:
        yield
    finally:
        _request_id.reset(token)


@dataclass
class Change:
    """A saved or deleted row, as the worker needs it to broadcast."""

    label: str
    pk: Any
    event: str
    created: bool = False
    snapshot: dict[str, Any] | None = None
    shadow: str = field(default="", compare=False)
    request_id: str = field(default="", compare=False)
    """Turbo's ``X-Turbo-Request-Id`` of the request that made the change (``""``: none)."""

    @classmethod
    def save(cls, instance: models.Model, created: bool, shadow: str = "") -> Change:
        return cls(
            instance._meta.label_lower, json_pk(instance), SAVE, bool(created), shadow=shadow,
            request_id=current_request_id(),
        )

    @classmethod
    def delete(cls, instance: models.Model, shadow: str = "") -> Change:
        return cls(
            instance._meta.label_lower, json_pk(instance), DELETE, False, snapshot(instance), shadow=shadow,
            request_id=current_request_id(),
        )

    @property
    def key(self) -> tuple[str, Any]:
        return (self.label, self.pk)

    def merge(self, later: Change) -> Change:
        """This change followed by ``later`` on the same object, as one change (the request id
        of the last change that had one wins)."""
        request_id = later.request_id or self.request_id
        if later.event == DELETE:
            return later if later.request_id == request_id else replace(later, request_id=request_id)
        if self.event == DELETE:  # deleted, then saved again under the same pk
            return Change(later.label, later.pk, SAVE, True, shadow=later.shadow, request_id=request_id)
        return Change(
            later.label, later.pk, SAVE, self.created or later.created, shadow=later.shadow,
            request_id=request_id,
        )

    def describe(self) -> str:
        """``chat.message pk=5 (save)``, for log lines."""
        return f"{self.label} pk={self.pk!r} ({self.event})"

    def to_payload(self, using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
        """This change, committed on the database ``using``, as one item of a broadcast task::

            {"v": 2, "label": "chat.message", "pk": 42, "event": "save", "created": true}

        plus ``using`` (not the default database), ``snapshot`` (a delete) and ``request_id``
        (made by a Turbo request), each only when it has a value.
        """
        item: dict[str, Any] = {
            "v": WIRE_VERSION, "label": self.label, "pk": self.pk, "event": self.event, "created": self.created,
        }
        if using != DEFAULT_DB_ALIAS:
            item["using"] = using
        if self.snapshot is not None:
            item["snapshot"] = self.snapshot
        if self.request_id:
            item["request_id"] = self.request_id
        return item

    @classmethod
    def from_payload(cls, item: Mapping[str, Any]) -> tuple[Change, str]:
        """The change an item of a broadcast task carries, and its database alias; raises
        :class:`~turbo_async.exceptions.PayloadError` naming what is wrong."""
        _validate_version(item)
        label, event = _field(item, "label", str), _field(item, "event", str)
        if "pk" not in item:
            raise PayloadError(f"A broadcast item has no 'pk': {_show(item)}")
        if event not in (SAVE, DELETE):
            raise PayloadError(f"Unknown broadcast event {event!r}; expected 'save' or 'delete'.")
        snapshot = item.get("snapshot")
        if snapshot is not None and not isinstance(snapshot, dict):
            raise PayloadError(f"{label} pk={item['pk']!r}: 'snapshot' must be an object, not {snapshot!r}")
        change = cls(
            label, item["pk"], event, bool(item.get("created", False)), snapshot,
            request_id=_field(item, "request_id", str, ""),
        )
        return change, _field(item, "using", str, DEFAULT_DB_ALIAS)


@dataclass
class StreamAction:
    """``stream.later.<action>(...)``: a stream's identity, the action and its encoded options."""

    stream_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    action: str
    options: dict[str, Any]
    """The keyword arguments of :meth:`Stream.broadcast_action <turbo_async.Stream.broadcast_action>`,
    encoded by :mod:`turbo_async.codec` (``{"text": "x", "id": "rooms"}``)."""
    shadow: str = field(default="", compare=False)
    request_id: str = field(default="", compare=False)
    """Turbo's ``X-Turbo-Request-Id`` of the request that made the call (``""``: none)."""

    def describe(self) -> str:
        return f"{self.stream_name}.{self.action}"

    def to_payload(self, using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
        """This action as one item of a broadcast task (``using`` is not carried: the worker runs
        the action as the stream's own call would)::

            {"v": 2, "stream": "chat:RoomListStream", "args": [], "kwargs": {},
             "action": "append", "options": {"text": "x", "id": "rooms"}}

        plus ``request_id`` when it has one.
        """
        item: dict[str, Any] = {
            "v": WIRE_VERSION, "stream": self.stream_name, "args": self.args, "kwargs": self.kwargs,
            "action": self.action, "options": self.options,
        }
        if self.request_id:
            item["request_id"] = self.request_id
        return item

    @classmethod
    def from_payload(cls, item: Mapping[str, Any]) -> tuple[StreamAction, str]:
        """The action an item of a broadcast task carries (and the default alias); raises
        :class:`~turbo_async.exceptions.PayloadError` naming what is wrong."""
        version = _validate_version(item)
        options = dict(_field(item, "options", dict, {}))
        request_id = _field(item, "request_id", str, "")
        if version == 1:  # 0.1.0 kept a refresh's request id among the options; until 0.3.0
            request_id = str(options.pop("request_id", "") or "")
        unknown = sorted(set(options) - ACTION_OPTIONS)
        if unknown:
            raise PayloadError(f"A stream action carries unknown options {unknown}: {_show(item)}")
        action = cls(
            _field(item, "stream", str), list(_field(item, "args", list, [])), dict(_field(item, "kwargs", dict, {})),
            _field(item, "action", str), options, request_id=request_id,
        )
        return action, DEFAULT_DB_ALIAS


ACTION_OPTIONS = frozenset({"template", "context", "text", "selector", "id", "method", "attributes", "custom"})
"""The keyword arguments of ``Stream.broadcast_action`` a :class:`StreamAction` may carry."""

Item = Change | StreamAction
"""One item of a broadcast task."""


def from_payload(item: Any) -> tuple[Item, str]:
    """The change or action an item of a broadcast task carries, and its database alias; raises
    :class:`~turbo_async.exceptions.PayloadError` naming what is wrong (a worker fails that item
    alone, without a retry: the same message would fail again)."""
    if not isinstance(item, Mapping):
        raise PayloadError(f"A broadcast item must be a JSON object, not {_show(item)}")
    if "stream" in item:
        return StreamAction.from_payload(item)
    return Change.from_payload(item)


def to_payload(items: Sequence[tuple[Item, str]]) -> list[dict[str, Any]]:
    """The argument of the broadcast task that carries ``items`` (each with its alias), in order."""
    return [item.to_payload(using) for item, using in items]


def payload_of_message(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """The items of a task message as it was sent or stored in an outbox row: this version's
    ``turbo_async.batch``, or, until 0.3.0, 0.1.0's one-change tasks (positional arguments)."""
    if task == BATCH_TASK and len(args) == 1 and isinstance(args[0], list):
        return list(args[0])
    if task == BROADCAST_TASK and 3 <= len(args) <= 4:  # 0.1.0; remove in 0.3.0
        item = dict(zip(("label", "pk", "event", "created"), args, strict=False))
        item.update((key, kwargs[key]) for key in ("using", "snapshot", "request_id") if key in kwargs)
        return [item]
    if task == STREAM_ACTION_TASK and len(args) == 5:  # 0.1.0; remove in 0.3.0
        return [dict(zip(("stream", "args", "kwargs", "action", "options"), args, strict=True))]
    raise PayloadError(f"Not a broadcast message: task {task!r} with args {_show(list(args))}")


def _validate_version(item: Mapping[str, Any]) -> int:
    """The item's wire version: 2, or 1 for 0.1.0's items, which had no ``"v"`` (until 0.3.0)."""
    version = item.get("v", 1)
    if isinstance(version, bool) or version not in (1, WIRE_VERSION):
        raise PayloadError(
            f"A broadcast item of wire format version {version!r}; this worker reads versions 1 and "
            f"{WIRE_VERSION}. Upgrade the workers before the web processes that send it."
        )
    return int(version)


def _field(item: Mapping[str, Any], key: str, kind: type, default: Any = PayloadError) -> Any:
    """``item[key]``, which must be a ``kind`` (missing: ``default``, or an error without one)."""
    value = item.get(key, default)
    if value is PayloadError:
        raise PayloadError(f"A broadcast item has no {key!r}: {_show(item)}")
    if value is not default and not isinstance(value, kind):
        raise PayloadError(f"A broadcast item's {key!r} must be a {kind.__name__}, not {value!r}")
    return value


def _show(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_pk(instance: models.Model) -> Any:
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


def rebuild(model: type[models.Model], snapshot: dict[str, Any], using: str) -> models.Model:
    """An unsaved instance with a deleted row's values, so ``message.room`` still works."""
    values = {
        f.attname: f.to_python(snapshot[f.attname])
        for f in model._meta.concrete_fields
        if f.attname in snapshot
    }
    instance = model(**values)
    instance._state.adding = False
    instance._state.db = using
    return instance
