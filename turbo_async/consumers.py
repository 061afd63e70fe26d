"""Layer 9: ``TurboStreamsConsumer``, the WebSocket end of the streams.

The client sends ``{"type": "subscribe" | "unsubscribe", "signed_channel_name": "..."}``; the server
sends ``{"signed_channel_name": "...", "data": "<turbo-stream ...>...</turbo-stream>"}`` for every
frame of a subscribed stream, and acknowledges a subscription with
``{"type": "subscribed", "signed_channel_name": "..."}``. Bad input is answered with
``{"type": "error", "error": "..."}`` and the socket stays open; nothing a client sends can raise out of the consumer.

Budgets (:mod:`turbo_async.security`): a socket that sends more than ``MESSAGE_BURST`` messages at
once, or more than ``MAX_MESSAGES_PER_SECOND`` for long, is closed with code 1008 (policy
violation) and one log line; the rate and the size are checked before anything is parsed. Group
adds and discards of all sockets of a process go through one gate of ``LAYER_CONCURRENCY`` calls
and wait (up to ``LAYER_WAIT_TIMEOUT``) for a pooled Redis connection instead of failing, and
leaving the groups of a closed socket never raises.

Liveness (docs/guarantees.rst, "Delivery to the page"): every ``HEARTBEAT_INTERVAL`` seconds
the server sends ``{"type": "ping", "t": <unix time>, "interval": <seconds>}``;
the client reconnects when nothing arrived for 2.5 intervals. The groups' memberships are renewed
by the process (:class:`~turbo_async.fanout.FanOut`, every ``RENEW_INTERVAL``), or by each
heartbeat when that is off or the socket has its own channel. A channel-layer error never ends the
consumer: reading from the layer is retried with backoff, and the outage is logged once per
socket. On each heartbeat the socket is also audited (:meth:`TurboStreamsConsumer.audit`): a
socket still behind where its stream stood one heartbeat earlier, with no frame in flight, is sent
what it missed from the history or told to reset.

Client messages are read as they arrive (:meth:`TurboStreamsConsumer.read_client`) and those that
arrived together are answered in order, with one hop to the database thread for their
permission tests (:meth:`TurboStreamsConsumer.receive_texts`): thousands of pages resubscribing at once
(docs/benchmarks.rst, "At scale").

At about 780 lines this module is over the package's 500: it is one class, the socket's lifecycle
(connect, the client's messages read and answered in runs, subscribe with its permission tests and replay,
the writer, the heartbeat and audit, close), whose
protocol, channel-layer calls and fan-out already live in :mod:`~turbo_async.protocol`,
:mod:`~turbo_async.layers` and :mod:`~turbo_async.fanout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.sessions import InstanceSessionWrapper
from channels.utils import await_many_dispatch
from django.core.exceptions import ObjectDoesNotExist

from . import conf, history, metrics
from .exceptions import InvalidSubscription, UnknownStream
from .fanout import FanOut, OwnChannel, shared_since, start_now, stream_position
from .layers import LAYER_ERRORS, RECEIVE_BACKOFF_MAX, Backoff, forget, new_channel, pooled_call
from .names import readable, unsign_with_group
from .protocol import (
    ABUSE_REASON,
    BAD_OFFSET,
    LAYER_DOWN_REASON,
    MESSAGE_TYPE,
    PING,
    POLICY_VIOLATION,
    RESET,
    RESET_MESSAGE_TYPE,
    SIGNATURE_EXPIRED,
    SLOW_READER_REASON,
    TRY_AGAIN_LATER,
    UNSUBSCRIBE,
    ProtocolError,
    frame_message,
    merge,
    parse,
)
from .registry import stream_registry
from .security import RefusalLog, TokenBucket, log_abuse, peer
from .streams import ModelStream, Stream

logger = logging.getLogger("turbo_async")

SOCKET_BACKLOG = 1000
"""Layer messages one socket may have waiting to be written (its client reads too slowly, or its
network stalled) before it is closed with code 1013: the page reconnects and catches up by offset
from the history (or refreshes). The process's other sockets never wait for it."""

OVER_BUDGET = "turbo_async.over_budget"
"""The ``type`` of the message :meth:`TurboStreamsConsumer.read_client` queues behind the last
client message within the budget: the dispatch closes the socket for abuse when it comes to it."""

CLIENT_TEXTS = "turbo_async.client_texts"
"""The ``type`` of the message :meth:`TurboStreamsConsumer.client_messages` hands the dispatch for
client messages that arrived together (``"messages"``: their ASGI ``websocket.receive`` events)."""

NEW_CHANNEL_WAIT = 5.0
"""Seconds a new socket waits for the channel layer to open its channel before the handshake is
refused (the client reconnects with backoff; a page should not hang on a dead Redis)."""


class TurboStreamsConsumer(AsyncWebsocketConsumer):
    """Route it at ``ws/`` (see :mod:`turbo_async.routing`), inside ``AuthMiddlewareStack``."""

    closing = False  # set when the socket is closed for abuse
    layer_down = False  # set while the channel layer fails, so that an outage is logged once
    heartbeat: asyncio.Task[None] | None = None  # a heartbeat being sent (see beat_later)
    heartbeat_timer: asyncio.TimerHandle | None = None  # the next heartbeat
    fan_out = True
    """Receive the groups' frames through the process's :class:`~turbo_async.fanout.FanOut`
    (False: each socket joins the groups with its own channel, as Channels does)."""
    membership: FanOut | OwnChannel
    """How this socket's groups reach it (set in ``__call__``; Channels' own ``groups`` is the
    list of groups a consumer joins at connect, which this consumer leaves empty)."""
    holding = False  # while a client message is handled, frames wait (order after a replay)
    pumped = False  # the client's messages are read by read_client (which spends the budget)
    over_budget = False  # read_client found the budget spent: what follows is dropped
    gone = False  # read_client read the client's disconnect
    writer: asyncio.Task[None] | None = None  # writing what push() queued, while a send waits (write_queued)
    arrived: asyncio.Future[None] | None = None  # client_messages waiting for read_client
    answered_ahead: dict[str, deque[tuple[bool, str]]] = {}  # replaced, never changed in place
    """signed name -> the answers of its permission tests asked ahead (:meth:`ask_ahead`), for
    the client messages being answered."""
    closer: asyncio.Future[None] | None = None  # the close of a socket too far behind, or abusive
    frame_send: ASGISend | None = None  # see past_session_saving
    ranges = False
    """The client applies messages carrying several frames (``"from_offset"``): it said so with
    ``"ranges": true`` in a subscribe, as turbo-async.js does. Frames that queued up for it then go
    out as one message (:func:`~turbo_async.protocol.merge`); any other client gets one message per frame."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__``, with the layer read through :meth:`layer_receive`:
        Channels awaits ``channel_layer.receive`` bare, so a Redis restart ends the consumer with
        "Exception in ASGI application" and leaves the page with a dead socket."""
        layer = get_channel_layer(self.channel_layer_alias)
        if layer is None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = layer
        channel_name = await open_channel(layer, scope, receive, send)
        if channel_name is None:
            return
        self.channel_name = channel_name
        # Channels' stubs type channel_receive as an ASGI receive; it returns layer messages.
        self.channel_receive = self.layer_receive  # type: ignore[assignment]
        self.base_send = send
        self.frame_send = past_session_saving(send)
        self.membership = FanOut.of(layer) if self.fan_out else OwnChannel(layer, channel_name)
        # What the fan-out hands this socket (push), written in order by one task at a time.
        self.queued: deque[dict[str, Any]] = deque()
        # The client's messages, read as they arrive (see read_client), handed out in runs.
        self.inbox: list[dict[str, Any]] = []
        self.pumped = True
        reader = asyncio.create_task(self.read_client(receive))
        # With the process's fan-out nothing is sent to the socket's own channel: it is not read
        # (a task and a channels_redis queue per socket, a tenth of an idle socket's memory).
        try:
            if self.fan_out:  # one source: no task and no asyncio.wait per message
                while True:
                    await self.dispatch(await self.client_messages())
            sources: list[Any] = [self.client_messages, self.layer_receive]
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass
        finally:
            reader.cancel()
            if self.writer is not None:
                self.writer.cancel()
            await forget(layer, self.channel_name)

    async def read_client(self, receive: Any) -> None:
        """Read the client's messages as they arrive, into :attr:`inbox`, spending the socket's
        budget on each (an abuser is closed before anything it sent is parsed).

        Read one by one as they are handled, a page's burst of subscribes (100 after a deploy)
        filled the ASGI server's queue of the socket's messages (uvicorn's ``ws_max_queue``, 32),
        the server stopped reading the socket, and the client's pong behind the burst went
        unread: with thousands of pages resubscribing at once, uvicorn closed them with 1011
        "keepalive ping timeout" before their turn came (docs/benchmarks.rst, the avalanche). The
        budget (``MESSAGE_BURST``, ``MAX_MESSAGES_PER_SECOND``) bounds what waits here."""
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                budget: TokenBucket | None = getattr(self, "budget", None)
                if self.closing or self.over_budget:
                    continue  # closed for abuse: what still arrives before the close handshake is dropped
                if budget is not None and not budget.take():
                    # Closed once the messages before it, within the budget, are answered.
                    self.over_budget = True
                    message = {"type": OVER_BUDGET}
            self.inbox.append(message)
            if self.arrived is not None and not self.arrived.done():
                self.arrived.set_result(None)
            if kind == "websocket.disconnect":
                self.gone = True  # what is still to be answered is not (see receive_texts)
                return

    async def client_messages(self) -> dict[str, Any]:
        """The next client message for :meth:`dispatch`; the texts that arrived together come as
        one :data:`CLIENT_TEXTS` message (:meth:`receive_texts`)."""
        while not self.inbox:
            self.arrived = asyncio.get_running_loop().create_future()
            try:
                await self.arrived
            finally:
                self.arrived = None
        inbox = self.inbox
        if inbox[0].get("type") != "websocket.receive":
            return inbox.pop(0)
        count = 1
        while count < len(inbox) and inbox[count].get("type") == "websocket.receive":
            count += 1
        run = inbox[:count]
        del inbox[:count]
        return run[0] if count == 1 else {"type": CLIENT_TEXTS, "messages": run}

    def push(self, message: dict[str, Any]) -> None:
        """A message of one of this socket's groups, from the process's :class:`FanOut`: queued
        for :meth:`write_frames`. A socket ``SOCKET_BACKLOG`` messages behind is closed."""
        if self.closing:
            return
        if len(self.queued) >= SOCKET_BACKLOG:
            self.closing = True
            self.queued.clear()
            logger.warning(
                "closed the WebSocket from %s with code %d: %d frames were waiting to be written "
                "to it (it reads too slowly); the page reconnects and catches up",
                peer(self.scope), TRY_AGAIN_LATER, SOCKET_BACKLOG,
            )
            self.closer = close_later(self.close(code=TRY_AGAIN_LATER, reason=SLOW_READER_REASON))
            return
        self.queued.append(message)
        if not self.holding:
            self.write_queued()

    def write_queued(self) -> None:
        """Write what :meth:`push` queued, unless the writer (:meth:`write_frames`) is at it: one
        at a time per socket, in order. It runs at once, in the caller's step (the fan-out's loop
        over its sockets, see :func:`~turbo_async.fanout.start_now`), as far as the socket takes the
        frames without waiting; only a socket whose send must wait (a slow reader) gets a task,
        until its list is empty. An idle socket keeps no task."""
        if self.writer is not None and not self.writer.done():
            return
        self.writer = None
        try:
            self.writer = start_now(self.write_frames())
        except Exception:  # a safety net: the fan-out's loop goes on to the other sockets
            self.queued.clear()
            logger.exception("writing to the WebSocket from %s failed", peer(self.scope))

    async def write_frames(self) -> None:
        """Send what :meth:`push` queued, in order, until nothing is left (or a client message is
        being answered: :meth:`receive_texts` starts it again)."""
        while self.queued and not self.holding:
            message = self.coalesce(self.queued.popleft())
            try:
                if message.get("type") == MESSAGE_TYPE:
                    await self.turbo_stream(message)  # what dispatch() does, one coroutine less per frame
                else:
                    await self.dispatch(message)
            except OSError:  # the client is gone; disconnect() follows
                self.queued.clear()
                return
            except Exception:  # a handler's bug must not stop this socket's frames
                logger.exception("sending a %r message to the WebSocket from %s failed",
                                 message.get("type"), peer(self.scope))

    def coalesce(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` and the frames queued right behind it, as one message, for a client that
        applies ranges (:func:`~turbo_async.protocol.merge`)."""
        if not self.ranges:
            return message
        group = message.get("group")
        sent = self.sent.get(group) if isinstance(group, str) else None
        return merge(message, self.queued, (sent.epoch, sent.offset) if sent else None)

    async def layer_receive(self) -> dict[str, Any]:
        """The next message of this socket's channel; waits out an unreachable layer."""
        backoff = Backoff(0.05, RECEIVE_BACKOFF_MAX)
        while True:
            try:
                message: dict[str, Any] = await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                self.layer_failed("could not read from the channel layer", exc)
                await backoff.wait()
                continue
            self.layer_recovered()
            return message

    def layer_failed(self, what: str, exc: BaseException) -> None:
        if not self.layer_down:
            self.layer_down = True
            logger.warning(
                "%s for the WebSocket from %s (%r); retrying, and rejoining its groups every "
                "TURBO_ASYNC['HEARTBEAT_INTERVAL'] seconds",
                what, peer(self.scope), exc,
            )

    def layer_recovered(self) -> None:
        if self.layer_down:
            self.layer_down = False
            logger.info("the channel layer answers again for the WebSocket from %s", peer(self.scope))

    async def connect(self) -> None:
        settings = conf.get()
        # group -> the signed names this socket subscribed with (a page may hold several
        # signatures of one stream, made at different times).
        self.subscriptions: dict[str, set[str]] = {}
        # group -> the last position the client has (it subscribed at it, or a replay sent it):
        # live copies up to it are dropped (a frame of another epoch is never a copy).
        self.replayed: dict[str, history.Position] = {}
        # group -> when this socket joined it (a time of the loop): see fanout.shared_since.
        self.joined: dict[str, float] = {}
        # group -> the last position this socket was sent, and where the stream stood at the last
        # heartbeat that found the socket behind (see audit()).
        self.sent: dict[str, history.Position] = {}
        self.behind: dict[str, history.Position] = {}
        # When this socket last began writing a frame, and whether it is writing one now.
        self.last_frame = 0.0
        self.writing = False
        self.budget = TokenBucket(settings.MAX_MESSAGES_PER_SECOND, settings.MESSAGE_BURST)
        self.refusals = RefusalLog(peer(self.scope), settings.LOGGED_REFUSALS_PER_SOCKET)
        metrics.socket_opened()
        await self.accept()
        if settings.HEARTBEAT_INTERVAL > 0:
            self.beat_later(settings.HEARTBEAT_INTERVAL)

    def beat_later(self, interval: float) -> None:
        """The next heartbeat in ``interval`` seconds (none at connect: a turbo-django client's
        first message must stay the server's answer). A timer, not a task asleep: an idle socket
        keeps no task for its heartbeat."""
        self.heartbeat_timer = asyncio.get_running_loop().call_later(interval, self.beat_now, interval)

    def beat_now(self, interval: float) -> None:
        self.heartbeat_timer = None
        self.heartbeat = asyncio.ensure_future(self.beat(interval))

    async def beat(self, interval: float) -> None:
        """Ping the client, join the groups again and audit the socket; then schedule the next."""
        loop = asyncio.get_running_loop()
        try:
            await self.send(json.dumps({"type": PING, "t": round(time.time(), 3), "interval": interval}))
        except OSError:  # the client is gone; disconnect() follows
            return
        deadline = loop.time() + interval  # a renewal never outlasts the next beat
        for group in list(self.subscriptions):
            try:
                await self.membership.renew(group, deadline)
            except LAYER_ERRORS as exc:
                self.layer_failed("could not renew the channel-layer groups", exc)
                break
            except Exception:  # a safety net: the heartbeat must outlive any layer bug
                logger.exception("renewing the groups of the WebSocket from %s failed", peer(self.scope))
                break
            else:
                self.layer_recovered()
        try:
            await self.audit(interval)
        finally:
            if self.heartbeat is not None:  # not stopped by disconnect()
                self.heartbeat = None
                self.beat_later(interval)

    async def audit(self, interval: float) -> None:
        """Once per heartbeat, compare each stream's position with what this socket was sent. A
        socket still behind where its stream stood one heartbeat earlier missed frames on the way
        (published while the layer resubscribed after a Redis restart, dropped for ``capacity`` or
        a slow reader): it is sent what it missed from the history, in order, or told to reset
        (the client refreshes the page). Without this, a page that missed the last frames before
        its stream went quiet would wait for the next save to notice. One Redis read per stream
        and web process per half heartbeat (:func:`stream_position`)."""
        if not history.enabled(self.channel_layer):
            return
        if self.writing or self.queued or asyncio.get_running_loop().time() - self.last_frame < interval:
            # Frames are flowing (or a slow reader's are queued for it): a gap shows in their
            # offsets, which the client acts on. The audit is for streams that went quiet.
            self.behind.clear()
            return
        for group, names in list(self.subscriptions.items()):
            try:
                now = await stream_position(self.channel_layer, group, interval / 2)
            except LAYER_ERRORS as exc:
                self.layer_failed("could not read the streams' positions", exc)
                return
            sent = self.sent.get(group)
            if sent is None and now is not None:
                self.sent[group] = now  # nothing sent yet: what the socket has now is the baseline
            if not history.fell_behind(self.behind, group, now, sent):
                continue
            assert now is not None and sent is not None
            logger.info(
                "the WebSocket from %s missed frames of %s (sent %s/%d, the stream is at %s/%d); "
                "replaying them", peer(self.scope), group, sent.epoch, sent.offset, now.epoch, now.offset,
            )
            for signed_name in list(names):
                await self.replay(group, signed_name, sent)
            self.sent[group] = now

    async def disconnect(self, code: int) -> None:
        metrics.socket_closed(code, getattr(self, "subscriptions", None))
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()
            self.heartbeat_timer = None
        if self.heartbeat is not None:
            heartbeat, self.heartbeat = self.heartbeat, None
            heartbeat.cancel()
        groups: list[str] = list(getattr(self, "subscriptions", {}))
        self.subscriptions = {}
        refusals: RefusalLog | None = getattr(self, "refusals", None)
        if refusals is not None:
            refusals.summary()
        await self.leave_groups(groups)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:  # type: ignore[override]
        """Channels' handler without its ``close_old_connections()`` hop to the database thread
        after :meth:`disconnect` (see :meth:`dispatch`): closing a socket touches no database."""
        for group in self.groups:  # Channels' own groups: none unless a subclass sets some
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def leave_groups(self, groups: list[str]) -> None:
        await self.membership.leave(groups, self, peer(self.scope))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return  # closed for abuse: what still arrives before the close handshake is dropped
        # The rate first (unless read_client spent it): it costs a clock read, and an abuser is
        # cut off before anything is parsed.
        if not self.pumped and not self.budget.take():
            await self.close_for_abuse()
            return
        await self.receive_texts([text_data])

    async def receive_texts(self, texts: list[str | None]) -> None:
        """Answer client messages that arrived together, in order, each as if it came alone; frames
        wait until the last is answered. The permission tests of their subscriptions are asked
        in one hop to the database thread (:meth:`ask_ahead`) instead of one hop each."""
        self.holding = True
        try:
            if len(texts) > 1:
                await self.ask_ahead(texts)
            for index, text in enumerate(texts):
                if index:
                    # Let the loop run between two answers: a subscribe's awaits seldom suspend,
                    # and thousands of sockets answering 100 each without a pause held the loop
                    # for longer than uvicorn waits for a pong (20 s): the pongs, read by other
                    # tasks, came too late and the sockets were closed with 1011.
                    await asyncio.sleep(0)
                if self.closing or self.gone:
                    return
                await self.answer(text)
        finally:
            self.answered_ahead = {}
            self.holding = False
            if self.queued:
                self.write_queued()

    async def answer(self, text_data: str | None) -> None:
        try:
            await self.handle(text_data)
        except OSError as exc:
            # The client went away while we answered (uvicorn's ClientDisconnected): nothing to
            # answer and nothing wrong; the disconnect that follows leaves the groups.
            logger.debug("WebSocket from %s closed while it was answered: %r", peer(self.scope), exc)
        except Exception:
            # A safety net: whatever a client sends, the socket and the process stay up.
            self.refusals.exception("could not handle a WebSocket message")
            await self.error("internal error while handling the message")

    async def ask_ahead(self, texts: list[str | None]) -> None:
        """Ask, in one hop to the database thread, the ``user_passes_test`` of every subscribe in
        ``texts`` that :meth:`handle` will ask (a valid signature of a known stream that is not open
        to everyone, within ``MAX_SUBSCRIPTIONS``, with a valid position); :meth:`allowed` takes
        the answers in order. What this skips, :meth:`handle` asks alone, as before: each message is
        answered as if it came alone, refusals included."""
        settings = conf.get()
        held = sum(len(names) for names in self.subscriptions.values())
        new: set[str] = set()
        asks: list[tuple[str, str, list[Any], dict[str, Any]]] = []
        for text in texts:
            try:
                content = parse(text, settings.MAX_MESSAGE_BYTES)
                if content.type == UNSUBSCRIBE:
                    continue
                (stream_name, args, kwargs), group = unsign_with_group(content.signed_name)
                history.parse(content.epoch, content.offset)
                stream_class = stream_registry.get_stream(stream_name)
            except (ProtocolError, InvalidSubscription, history.BadOffset, UnknownStream):
                continue
            signed_name = content.signed_name
            if signed_name not in self.subscriptions.get(group, ()) and signed_name not in new:
                if held >= settings.MAX_SUBSCRIPTIONS:
                    # Refused for the cap, unless an unsubscribe before it frees a place: asked alone then.
                    continue
                held += 1
                new.add(signed_name)
            if not open_to_everyone(stream_class):
                asks.append((signed_name, stream_name, args, kwargs))
        if not asks:
            return
        answers = await self.permits_many([(stream_name, args, kwargs) for _, stream_name, args, kwargs in asks])
        answered_ahead: dict[str, deque[tuple[bool, str]]] = {}
        for (signed_name, *_), answer in zip(asks, answers, strict=True):
            answered_ahead.setdefault(signed_name, deque()).append(answer)
        self.answered_ahead = answered_ahead

    async def close_for_abuse(self) -> None:
        settings = conf.get()
        self.closing = True
        # One line per abuser, however many messages it sends (within the process's budget).
        client = peer(self.scope)
        log_abuse(
            "closed the WebSocket from %s with code %d: it sent more than %d messages at once or "
            "%s per second for too long (TURBO_ASYNC['MESSAGE_BURST'], "
            "TURBO_ASYNC['MAX_MESSAGES_PER_SECOND'])",
            client, POLICY_VIOLATION, settings.MESSAGE_BURST, settings.MAX_MESSAGES_PER_SECOND, peer=client,
        )
        # Not awaited in this handler: uvicorn's close waits for its reader, and the reader waits
        # for room in its queue of this client's messages, which only this consumer's next
        # receive() makes. Awaited, the close reached the client after the close timeout (10 s).
        self.closer = close_later(self.close(code=POLICY_VIOLATION, reason=ABUSE_REASON))

    async def handle(self, text_data: str | None) -> None:
        settings = conf.get()
        try:
            content = parse(text_data, settings.MAX_MESSAGE_BYTES)
        except ProtocolError as exc:
            await self.error(str(exc), exc.signed_name)
            return
        signed_name = content.signed_name
        try:
            (stream_name, args, kwargs), group = unsign_with_group(signed_name)
        except InvalidSubscription as exc:
            self.refusals.warning("refused a subscription to %s: %s", readable(signed_name), exc)
            # The client refreshes the page on this code: only a new render signs anew.
            code = SIGNATURE_EXPIRED if str(exc).startswith("signature expired") else None
            metrics.refused(code or "invalid_signature")
            await self.error(f"invalid signed_channel_name: {exc}", signed_name, code=code)
            return
        if content.type == UNSUBSCRIBE:
            await self.unsubscribe(group, signed_name)
            return
        # Counted per signed name: every name gets its own copy of each frame.
        held = sum(len(names) for names in self.subscriptions.values())
        if signed_name not in self.subscriptions.get(group, ()) and held >= settings.MAX_SUBSCRIPTIONS:
            metrics.refused("too_many_subscriptions")
            await self.error(
                f"too many subscriptions on this socket (at most {settings.MAX_SUBSCRIPTIONS}; "
                "see TURBO_ASYNC['MAX_SUBSCRIPTIONS'])",
                signed_name,
            )
            return
        try:
            seen = history.parse(content.epoch, content.offset)
        except history.BadOffset as exc:
            metrics.refused(BAD_OFFSET)
            await self.error(f"invalid position: {exc}", signed_name, code=BAD_OFFSET)
            return
        allowed, reason = await self.allowed(signed_name, stream_name, args, kwargs)
        if not allowed:
            metrics.refused(reason)
            await self.error(reason, signed_name)
            return
        if group not in self.subscriptions:
            try:
                await self.membership.join(group, self)
                self.joined[group] = asyncio.get_running_loop().time()
            except LAYER_ERRORS as exc:
                self.refusals.warning("could not join the group of %r: %r", stream_name, exc)
                metrics.refused("layer_unavailable")
                await self.error(
                    "the server cannot subscribe now (channel layer unavailable); subscribe again later",
                    signed_name,
                )
                return
        metrics.subscribed(self.subscriptions, group, signed_name)
        self.subscriptions.setdefault(group, set()).add(signed_name)
        if content.ranges:
            self.ranges = True
        await self.send(json.dumps({"type": "subscribed", "signed_channel_name": signed_name}))
        if seen is not None and history.enabled(self.channel_layer):
            self.sent.setdefault(group, seen)
            self.client_has(group, seen)
            await self.replay(group, signed_name, seen)

    async def replay(self, group: str, signed_name: str, seen: history.Position) -> None:
        """Send what the client missed after ``seen``, in order, before any live frame (live
        frames wait until this handler returns: in the socket's list, see :meth:`receive`, or
        in its channel); or tell it to refresh."""
        try:
            missed = await shared_since(self.channel_layer, group, seen, self.joined.get(group))
        except history.BadOffset as exc:
            await self.error(f"invalid position: {exc}", signed_name, code=BAD_OFFSET)
            return
        except LAYER_ERRORS as exc:
            self.layer_failed("could not read the stream's history", exc)
            missed = history.Replay(None, [], reset="the history cannot be read now")
        if missed.reset is not None:
            metrics.reset_sent(missed.reset)
            await self.send(json.dumps({"type": RESET, "signed_channel_name": signed_name, "reason": missed.reset}))
            return
        for offset, data in missed.frames:
            await self.send(frame_message(signed_name, data, seen.epoch, offset))
        metrics.replayed(len(missed.frames))
        if missed.frames:
            # Live frames already queued for this socket carry these offsets again.
            last = history.Position(seen.epoch, missed.frames[-1][0])
            self.client_has(group, last)
            if history.after(last, self.sent.get(group)):
                self.sent[group] = last

    def client_has(self, group: str, position: history.Position) -> None:
        """The client has ``group``'s frames up to ``position``: a live copy of one is dropped
        (one a worker sent late, or that the process filled from the history, see
        :meth:`~turbo_async.fanout.FanOut.fill`)."""
        if history.after(position, self.replayed.get(group)):
            self.replayed[group] = position

    async def allowed(
        self, signed_name: str, stream_name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[bool, str]:
        """Whether the scope's user may subscribe. A stream open to everyone (``Stream``'s own
        ``user_passes_test`` and a constructor of ours) is answered here; any other is rebuilt
        and asked in Django's database thread: answered already when :meth:`ask_ahead` asked it
        with the messages that came with it, else now."""
        try:
            stream_class = stream_registry.get_stream(stream_name)
        except UnknownStream:
            self.refusals.warning("subscription to unknown stream %r", stream_name)
            return False, f"unknown stream {stream_name!r}"
        if open_to_everyone(stream_class):
            return True, ""
        answers = self.answered_ahead.get(signed_name)
        if answers:
            return answers.popleft()
        return await self.permits(stream_name, args, kwargs)

    async def permits(self, stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, str]:
        """Rebuild the stream and ask its ``user_passes_test`` with the scope's user, in Django's
        database thread (which closes stale database connections before and after)."""
        return (await self.permits_many([(stream_name, args, kwargs)]))[0]

    async def permits_many(self, asks: list[tuple[str, list[Any], dict[str, Any]]]) -> list[tuple[bool, str]]:
        """:meth:`permits_now` of each of ``asks``, in one hop to the database thread."""
        answers: list[tuple[bool, str]] = await database_sync_to_async(
            lambda: [self.permits_now(*ask) for ask in asks]
        )()
        return answers

    def permits_now(self, stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, str]:
        """Rebuild the stream and ask its ``user_passes_test`` with the scope's user (in the
        database thread)."""
        user = self.scope.get("user")
        try:
            stream = stream_registry.get_stream(stream_name)(*args, **kwargs)
            if stream.user_passes_test(user):
                return True, ""
        except UnknownStream:
            self.refusals.warning("subscription to unknown stream %r", stream_name)
            return False, f"unknown stream {stream_name!r}"
        except ObjectDoesNotExist as exc:  # e.g. the user of a UserBroadcastComponent is gone
            self.refusals.warning("subscription to %r refused: %s", stream_name, exc)
            return False, "permission denied"
        except Exception:
            self.refusals.exception("could not run the permission test of %r", stream_name)
            return False, "permission test failed"
        self.refusals.warning("user %s may not subscribe to %r", user, stream_name)
        return False, "permission denied"

    async def unsubscribe(self, group: str, signed_name: str) -> None:
        names = self.subscriptions.get(group)
        if not names:
            return
        metrics.unsubscribed(names, signed_name)
        names.discard(signed_name)
        if not names:
            del self.subscriptions[group]
            await self.leave_groups([group])

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Frames from the layer go straight to :meth:`turbo_stream`, client messages to
        :meth:`receive_texts`, and the socket's connect and disconnect to Channels' handlers.
        Channels' own dispatch runs ``close_old_connections()`` in a worker thread before every
        handler: about half of a web process's time per frame and socket, a fifth of its time per
        subscription (docs/benchmarks.rst), and two thread hops per socket's handshake and close
        (4 % of a web process's time in a reconnection storm, docs/soak.rst). Frames, connect and
        disconnect touch no database; a client message touches it only in :meth:`permits_many`,
        whose thread (Channels' ``database_sync_to_async``) closes stale connections before and
        after."""
        if message.get("type") == MESSAGE_TYPE:
            await self.turbo_stream(message)
            return
        if message.get("type") == RESET_MESSAGE_TYPE:
            await self.turbo_reset(message)
            return
        if message.get("type") == CLIENT_TEXTS:
            await self.receive_texts([part.get("text") for part in message["messages"]])
            return
        if message.get("type") == "websocket.receive":
            await self.websocket_receive(message)  # type: ignore[arg-type]
            return
        if message.get("type") == OVER_BUDGET:
            await self.close_for_abuse()
            return
        if message.get("type") == "websocket.connect":
            await self.websocket_connect(message)  # type: ignore[arg-type]
            return
        if message.get("type") == "websocket.disconnect":
            await self.websocket_disconnect(message)
            return
        await super().dispatch(message)

    async def turbo_stream(self, event: dict[str, Any]) -> None:
        """Frames from the layer: sent once per signed name this socket subscribed with."""
        group = event.get("group", "")
        offset = event.get("offset")
        epoch = event.get("epoch")
        has = self.replayed.get(group)
        if isinstance(offset, int) and has is not None and epoch == has.epoch and offset <= has.offset:
            return  # the client has it: it subscribed after it, or a replay sent it
        self.last_frame = asyncio.get_running_loop().time()
        self.writing = True
        try:
            send: ASGISend = self.frame_send or self.base_send  # type: ignore[assignment]
            for signed_name in self.subscriptions.get(group, ()):
                message = _shared.send_of(event, signed_name)
                await send(message)
                metrics.frame_sent(len(message["text"]), event.get("committed"))
        finally:
            self.writing = False
        position = _shared.position_of(event)
        # Two workers number and send their publications in two steps, so a publication may reach the
        # layer after a later one: the socket was still sent the later one, and the audit
        # must not think it behind (it would replay frames the page has).
        if position is not None and history.after(position, self.sent.get(group)):
            self.sent[group] = position

    async def turbo_reset(self, event: dict[str, Any]) -> None:
        """The process missed frames of a group that the history cannot give back: every page
        subscribed to it refreshes (the client's answer to a ``reset``)."""
        group = event.get("group", "")
        for signed_name in list(self.subscriptions.get(group, ())):
            metrics.reset_sent(str(event.get("reason")))
            reply = {"type": RESET, "signed_channel_name": signed_name, "reason": event.get("reason")}
            await self.send(json.dumps(reply))
        self.sent.pop(group, None)
        self.behind.pop(group, None)

    async def error(self, message: str, signed_name: Any = None, code: str | None = None) -> None:
        reply: dict[str, Any] = {"type": "error", "error": message}
        if isinstance(signed_name, str) and len(signed_name) < 1024:
            reply["signed_channel_name"] = signed_name
            reply["stream"] = readable(signed_name)  # what the client names in its console
        if code is not None:
            reply["code"] = code
        await self.send(json.dumps(reply))


async def open_channel(layer: Any, scope: Any, receive: Any, send: Any) -> str | None:
    """The socket's channel name, or ``None`` after refusing the handshake. With
    ``RedisChannelLayer`` a random name (no Redis round trip); ``RedisPubSubChannelLayer``
    subscribes to it in Redis, which fails while Redis is unreachable: that is retried for up to
    ``NEW_CHANNEL_WAIT`` seconds (a Redis restart takes less), then the handshake is refused
    (accepted, then closed with 1011 and :data:`LAYER_DOWN_REASON`) and the client reconnects with
    backoff, instead of "Exception in ASGI application"."""
    deadline = asyncio.get_running_loop().time() + min(NEW_CHANNEL_WAIT, conf.get().LAYER_WAIT_TIMEOUT)
    try:
        name: str = await pooled_call(new_channel, layer, deadline=deadline)
    except LAYER_ERRORS as exc:
        logger.warning(
            "refused a WebSocket from %s: the channel layer could not open a channel for it (%r); "
            "the page reconnects", peer(scope), exc,
        )
        # Accepted, then closed with a reason the page shows: a refused handshake is a bare 403
        # in the browser, which reads as an origin or login problem.
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1011, "reason": LAYER_DOWN_REASON})
        return None
    return name


def open_to_everyone(stream_class: type[Stream]) -> bool:
    """Whether subscribing to ``stream_class`` needs no question to the database: it keeps
    ``Stream.user_passes_test`` (everyone may) and builds without code of the project's own."""
    return stream_class.user_passes_test is Stream.user_passes_test and stream_class.__init__ in (
        object.__init__, ModelStream.__init__,
    )


class SharedFrame:
    """What the sockets of a process share of the publication being written: its ASGI
    ``websocket.send`` message per signed name, and its position. The fan-out hands one
    publication to its sockets one after another, and most of a stream's sockets subscribed with
    the same signed name (one render): the message is made once per publication, signed name and
    process instead of once per socket (ASGI servers read a ``send`` message, never change it).
    Keyed by the publication's identity (a merged run is a message of its own); holds the last only."""

    def __init__(self) -> None:
        self.event: dict[str, Any] | None = None
        self.sends: dict[str, dict[str, str]] = {}
        self.position: history.Position | None = None

    def _hold(self, event: dict[str, Any]) -> None:
        if event is not self.event:
            epoch, offset = event.get("epoch"), event.get("offset")
            self.event, self.sends = event, {}
            self.position = None
            if isinstance(epoch, str) and isinstance(offset, int):
                self.position = history.Position(epoch, offset)

    def send_of(self, event: dict[str, Any], signed_name: str) -> dict[str, str]:
        """The ``websocket.send`` of ``event`` for ``signed_name`` (:func:`~turbo_async.protocol.frame_message`)."""
        self._hold(event)
        message = self.sends.get(signed_name)
        if message is None:
            text = frame_message(
                signed_name, event["data"], event.get("epoch"), event.get("offset"), event.get("from_offset")
            )
            message = self.sends[signed_name] = {"type": "websocket.send", "text": text}
        return message

    def position_of(self, event: dict[str, Any]) -> history.Position | None:
        """Where ``event`` stands in its stream, if it is numbered."""
        self._hold(event)
        return self.position


_shared = SharedFrame()


ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


def past_session_saving(send: ASGISend) -> ASGISend:
    """The ASGI ``send`` under Channels' session middleware, for frames.

    ``SessionMiddleware`` (in ``AuthMiddlewareStack``) wraps ``send`` to save the session and
    set its cookie on ``http.response.start``; for every other message it only reads the lazy
    session twice and passes it on. Fanning a frame out to hundreds of sockets, those reads were
    about a tenth of a web process's time (py-spy, docs/benchmarks.rst). Frames skip that
    wrapper (and only that one: any other middleware's ``send`` is kept); every other message
    of the socket still goes through it."""
    while isinstance(getattr(send, "__self__", None), InstanceSessionWrapper) and (
        getattr(send, "__func__", None) is InstanceSessionWrapper.send
    ):
        send = send.__self__.real_send  # type: ignore[attr-defined]
    return send


def close_later(close: Awaitable[None]) -> asyncio.Future[None]:
    """A close scheduled rather than awaited; its error (the client went away first) is read here
    so that asyncio does not log it as never retrieved."""
    future = asyncio.ensure_future(close)
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future
