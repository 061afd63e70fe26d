"""Layer 9: ``TurboStreamsConsumer``, the WebSocket end of the streams.

The client sends ``{"type": "subscribe" | "unsubscribe", "signed_channel_name": "..."}``; the server
sends ``{"signed_channel_name": "...", "data": "<turbo-stream ...>...</turbo-stream>"}`` for every
frame of a subscribed stream, and acknowledges a subscription with
``{"type": "subscribed", "signed_channel_name": "..."}``. Bad input is answered with
``{"type": "error", "error": "..."}`` and the socket stays open; nothing a client sends can raise out of the consumer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import ObjectDoesNotExist

from . import conf
from .delivery import layer_call
from .exceptions import InvalidSubscription, UnknownStream
from .names import group_name, unsign
from .registry import stream_registry

logger = logging.getLogger("turbo_async")

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"


class TurboStreamsConsumer(AsyncWebsocketConsumer):
    """Route it at ``ws/`` (see :mod:`turbo_async.routing`), inside ``AuthMiddlewareStack``."""

    async def connect(self) -> None:
        # group -> the signed names this socket subscribed with (a page may hold several
        # signatures of one stream, made at different times).
        self.subscriptions: dict[str, set[str]] = {}
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in list(getattr(self, "subscriptions", {})):
            await layer_call(self.channel_layer.group_discard, group, self.channel_name)
        self.subscriptions = {}

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            await self.handle(text_data)
        except Exception:
            # A safety net: whatever a client sends, the socket and the process stay up.
            logger.exception("could not handle a WebSocket message")
            await self.error("internal error while handling the message")

    async def handle(self, text_data: str | None) -> None:
        settings = conf.get()
        if text_data is None:
            await self.error("binary messages are not supported; send JSON text")
            return
        # "surrogatepass": a lone surrogate must not raise here (browsers never send one).
        size = len(text_data.encode("utf-8", "surrogatepass"))
        if size > settings.MAX_MESSAGE_BYTES:
            await self.error(f"message larger than {settings.MAX_MESSAGE_BYTES} bytes")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            await self.error("message is not valid JSON")
            return
        if not isinstance(content, dict):
            await self.error("message must be a JSON object")
            return
        message_type = content.get("type")
        signed_name = content.get("signed_channel_name")
        if message_type not in (SUBSCRIBE, UNSUBSCRIBE):
            await self.error(
                f"unknown message type {_short(message_type)}; expected 'subscribe' or "
                "'unsubscribe'",
                signed_name,
            )
            return
        if not isinstance(signed_name, str):
            await self.error("signed_channel_name must be a string")
            return
        try:
            stream_name, args, kwargs = unsign(signed_name)
        except InvalidSubscription as exc:
            logger.warning("refused a subscription: %s", exc)
            await self.error(f"invalid signed_channel_name: {exc}", signed_name)
            return
        group = group_name(stream_name, args, kwargs)
        if message_type == UNSUBSCRIBE:
            await self.unsubscribe(group, signed_name)
            return
        # Counted per signed name: every name gets its own copy of each frame.
        held = sum(len(names) for names in self.subscriptions.values())
        if signed_name not in self.subscriptions.get(group, ()) and held >= settings.MAX_SUBSCRIPTIONS:
            await self.error(
                f"too many subscriptions on this socket (at most {settings.MAX_SUBSCRIPTIONS}; "
                "see TURBO_ASYNC['MAX_SUBSCRIPTIONS'])",
                signed_name,
            )
            return
        allowed, reason = await self.allowed(stream_name, args, kwargs)
        if not allowed:
            await self.error(reason, signed_name)
            return
        if group not in self.subscriptions:
            await layer_call(self.channel_layer.group_add, group, self.channel_name)
        self.subscriptions.setdefault(group, set()).add(signed_name)
        await self.send(json.dumps({"type": "subscribed", "signed_channel_name": signed_name}))

    @database_sync_to_async
    def allowed(self, stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, str]:
        """Rebuild the stream and ask its ``user_passes_test`` with the scope's user."""
        user = self.scope.get("user")
        try:
            stream = stream_registry.get_stream(stream_name)(*args, **kwargs)
            if stream.user_passes_test(user):
                return True, ""
        except UnknownStream:
            logger.warning("subscription to unknown stream %r", stream_name)
            return False, f"unknown stream {stream_name!r}"
        except ObjectDoesNotExist as exc:  # e.g. the user of a UserBroadcastComponent is gone
            logger.warning("subscription to %r refused: %s", stream_name, exc)
            return False, "permission denied"
        except Exception:
            logger.exception("could not check the subscription to %r", stream_name)
            return False, "subscription check failed"
        logger.warning("user %s may not subscribe to %r", user, stream_name)
        return False, "permission denied"

    async def unsubscribe(self, group: str, signed_name: str) -> None:
        names = self.subscriptions.get(group)
        if not names:
            return
        names.discard(signed_name)
        if not names:
            del self.subscriptions[group]
            await layer_call(self.channel_layer.group_discard, group, self.channel_name)

    async def turbo_stream(self, event: dict[str, Any]) -> None:
        """Frames from the layer: sent once per signed name this socket subscribed with."""
        for signed_name in self.subscriptions.get(event.get("group", ""), ()):
            await self.send(json.dumps({"signed_channel_name": signed_name, "data": event["data"]}))

    async def error(self, message: str, signed_name: Any = None) -> None:
        reply: dict[str, Any] = {"type": "error", "error": message}
        if isinstance(signed_name, str) and len(signed_name) < 1024:
            reply["signed_channel_name"] = signed_name
        await self.send(json.dumps(reply))


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error frames echo what the client sent)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
