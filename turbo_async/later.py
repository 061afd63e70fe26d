"""``stream.later.<action>(...)``: an explicit broadcast deferred to a worker after commit.

Model instances in the context travel as ``{"__model__": "chat.message", "pk": 5}`` and are
reloaded by the worker; anything else in the context must be JSON-serialisable.

>>> room.stream.later.append("chat/message.html", {"message": message}, id="messages")
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils.safestring import SafeData, mark_safe

from .frames import ACTIONS, REFRESH, REMOVE
from .registry import stream_registry

if TYPE_CHECKING:
    from .streams import Stream

MODEL_KEY = "__model__"
SAFE_KEY = "__safe__"


class Later:
    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def _queue(self, action: str, **options: Any) -> None:
        from . import conf
        from .tasks import stream_action

        stream = self._stream
        args = [
            stream.stream_name, stream.get_init_args(), stream.get_init_kwargs(), action,
            encode(options),
        ]
        queue = conf.get().QUEUE
        shadow = f"{stream.stream_name.replace(':', '.')}.{action}"

        def send() -> None:
            from . import delivery

            if delivery.inline():  # inside turbo_async.testing's capture: run it here, now
                stream_action.apply(tuple(args), throw=True)
                return
            options: dict[str, Any] = {"queue": queue} if queue else {}
            stream_action.apply_async(tuple(args), shadow=shadow, **options)

        transaction.on_commit(send)

    def append(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("append", template=template, context=context, text=text, selector=selector, id=id)

    def prepend(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("prepend", template=template, context=context, text=text, selector=selector, id=id)

    def replace(self, template: str | None = None, context: dict[str, Any] | None = None,
                text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("replace", template=template, context=context, text=text, selector=selector, id=id)

    def update(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("update", template=template, context=context, text=text, selector=selector, id=id)

    def before(self, template: str | None = None, context: dict[str, Any] | None = None,
               text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("before", template=template, context=context, text=text, selector=selector, id=id)

    def after(self, template: str | None = None, context: dict[str, Any] | None = None,
              text: str | None = None, selector: str | None = None, id: str | None = None) -> None:
        self._queue("after", template=template, context=context, text=text, selector=selector, id=id)

    def remove(self, selector: str | None = None, id: str | None = None) -> None:
        self._queue("remove", selector=selector, id=id)

    def refresh(self) -> None:
        self._queue("refresh")


def encode(value: Any) -> Any:
    """Replace model instances by references; fail early on what JSON cannot carry."""
    if isinstance(value, models.Model):
        if value.pk is None:
            raise ValueError(f"Cannot send an unsaved {type(value).__name__} to a worker; save it first.")
        return {MODEL_KEY: value._meta.label_lower, "pk": json.loads(json.dumps(value.pk, cls=DjangoJSONEncoder))}
    if isinstance(value, SafeData):  # mark_safe()/format_html(): stays safe in the worker
        return {SAFE_KEY: str(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    try:
        return json.loads(json.dumps(value, cls=DjangoJSONEncoder))
    except TypeError:
        raise TypeError(
            f"stream.later cannot send {type(value).__name__} {value!r} to a worker: use model "
            "instances or JSON-serialisable values in the context."
        ) from None


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {MODEL_KEY, "pk"}:
            model = apps.get_model(value[MODEL_KEY])
            return model._base_manager.get(pk=value["pk"])
        if set(value) == {SAFE_KEY}:
            return mark_safe(value[SAFE_KEY])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def perform(
    stream_name: str, args: list[Any], kwargs: dict[str, Any], action: str, options: dict[str, Any]
) -> None:
    """Rebuild the stream and run the action (in the worker)."""
    stream = stream_registry.get_stream(stream_name)(*args, **kwargs)
    if action == REFRESH:
        stream.refresh()
    elif action == REMOVE:
        stream.remove(selector=options.get("selector"), id=options.get("id"))
    elif action in ACTIONS:
        getattr(stream, action)(
            options.get("template"), decode(options.get("context")), decode(options.get("text")),
            options.get("selector"), options.get("id"),
        )
    else:
        raise ValueError(f"Unknown stream action {action!r}.")
