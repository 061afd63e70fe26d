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
the client reconnects when nothing arrived for 2.5 intervals. On each heartbeat the socket joins
its groups again: channels_redis keeps group membership only in Redis, so a Redis restart or a
FLUSHALL empties it, and it expires after ``group_expiry``; the renewal brings it back within one
interval. A channel-layer error never ends the consumer: reading from the layer is retried with
backoff, and the outage is logged once per socket. On each heartbeat the socket is also audited
(:meth:`TurboStreamsConsumer.audit`): a socket still behind where its stream stood one heartbeat
earlier, with no frame in flight, is sent what it missed from the history or told to reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.sessions import InstanceSessionWrapper
from channels.utils import await_many_dispatch
from django.core.exceptions import ObjectDoesNotExist

from . import conf, history, metrics
from .delivery import LAYER_ERRORS, MESSAGE_TYPE, layer_call
from .exceptions import InvalidSubscription, UnknownStream
from .names import group_name, unsign
from .registry import stream_registry
from .security import RefusalLog, TokenBucket, log_abuse, peer
from .streams import ModelStream, Stream

logger = logging.getLogger("turbo_async")

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
PING = "ping"
RESET = "reset"
BAD_OFFSET = "bad_offset"
SIGNATURE_EXPIRED = "signature_expired"
"""The ``code`` of the error frame refusing a signature older than ``SIGNATURE_MAX_AGE``."""

RESET_MESSAGE_TYPE = "turbo.reset"
"""The ``type`` of the message a process's :class:`FanOut` hands its sockets when their stream's
missed frames cannot be replayed (:meth:`TurboStreamsConsumer.turbo_reset`)."""

RECEIVE_BACKOFF_MAX = 2.0
"""Cap, in seconds, of the wait between attempts to read from an unreachable channel layer."""

NEW_CHANNEL_WAIT = 5.0
"""Seconds a new socket waits for the channel layer to open its channel before the handshake is
refused (the client reconnects with backoff; a page should not hang on a dead Redis)."""

POLICY_VIOLATION = 1008
"""The WebSocket close code of a socket closed for exceeding its message budget (RFC 6455)."""

TRY_AGAIN_LATER = 1013
"""The WebSocket close code of a socket closed because it fell ``SOCKET_BACKLOG`` messages behind."""

SOCKET_BACKLOG = 1000
"""Layer messages one socket may have waiting to be written (its client reads too slowly, or its
network stalled) before it is closed with code 1013: the page reconnects and catches up by offset
from the history (or refreshes). The process's other sockets never wait for it."""

MERGE_FRAMES = 64
MERGE_BYTES = 256 * 1024
"""At most this many frames, of at most this many bytes of ``data`` in all, go out as one message
to a socket whose frames queued up (see :meth:`TurboStreamsConsumer.coalesce`)."""

# One gate per event loop (uvicorn runs one per worker process): asyncio primitives belong to a loop.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(max(1, conf.get().LAYER_CONCURRENCY))
    return gate


async def pooled_call(
    function: Callable[..., Awaitable[Any]], *args: Any, deadline: float | None = None
) -> Any:
    """A channel-layer call of a socket: through the process's gate, so that thousands of sockets
    subscribing or closing at once queue here rather than exhaust channels_redis' connection pool
    (redis-py's pool raises ``MaxConnectionsError`` beyond ``max_connections``, 100 by default),
    and retried with backoff while the pool is busy or Redis is unreachable, for up to
    ``LAYER_WAIT_TIMEOUT`` seconds (or until ``deadline``, a time of the running loop). The last
    error is raised after that."""
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + conf.get().LAYER_WAIT_TIMEOUT
    delay = 0.02
    while True:
        async with _gate():
            try:
                return await layer_call(function, *args)
            except LAYER_ERRORS:
                if loop.time() + delay > deadline:
                    raise
        # Jitter: sockets refused together must not come back together.
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 1.0)


class FanOut:
    """The frames of a web process's groups, read once and handed to its sockets.

    Channels' way costs, per frame **and per socket**: the layer's copy of the message (decoded
    again for each socket by channels_redis' pub/sub layer), a new task and an ``asyncio.wait``
    in ``await_many_dispatch``, then the handler. Here one channel of the process (per event loop
    and layer) joins each group that some socket of the process subscribed to; one task reads it
    and appends each message to the waiting list of the group's sockets, whose own long-lived
    writer task sends it (:meth:`TurboStreamsConsumer.write_frames`). A socket that does not keep
    up only lengthens its own list, up to ``SOCKET_BACKLOG``.

    Upkeep (:meth:`upkeep`), every ``RENEW_INTERVAL`` seconds and at once when the layer answers
    again after an error: the process joins its groups again (channels_redis' ``core`` layer keeps
    membership only in Redis, so a restart, a ``FLUSHALL`` or ``group_expiry`` loses it; the
    pub/sub layer does not retry a join that failed during an outage), then checks where each of
    its streams stands against the last frame its reader received. A stream still ahead of it at
    the next check (frames are not just on their way) missed frames on the way to this process:
    the frames are read once from the history and handed to the group's sockets like any other,
    or, when the history cannot cover them (a new epoch), the sockets are told to reset (their
    pages refresh). One ``group_add`` (core layer) and one position read per group and process per
    interval, however many sockets hold the group."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.members: dict[str, set[TurboStreamsConsumer]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None
        self.opening = asyncio.Lock()
        self.layer_down = False
        # group -> the last numbered frame the reader handed out, and where the stream stood at the
        # last check that found the process behind it.
        self.received: dict[str, history.Position] = {}
        self.behind: dict[str, history.Position] = {}
        self.wake = asyncio.Event()
        # The core layer keeps group membership in Redis only: it is renewed on every upkeep.
        self.membership_in_redis = not hasattr(layer, "_get_layer")

    @classmethod
    def of(cls, layer: Any) -> FanOut:
        """The fan-out of ``layer`` on the running loop (uvicorn runs one loop per process)."""
        per_loop = _fanouts.setdefault(asyncio.get_running_loop(), {})
        found = per_loop.get(id(layer))
        if found is None or found.layer is not layer:
            found = per_loop[id(layer)] = cls(layer)
        return found

    async def open(self) -> str:
        """The process's channel, opened on first use, with its reader."""
        if self.channel is None:
            async with self.opening:
                if self.channel is None:
                    channel: str = await pooled_call(new_channel, self.layer)
                    self.reader = asyncio.create_task(self.read(channel))
                    interval = conf.get().RENEW_INTERVAL
                    if interval > 0:
                        self.keeper = asyncio.create_task(self.upkeep(channel, interval))
                    self.channel = channel
        return self.channel

    async def join(self, group: str, consumer: TurboStreamsConsumer) -> None:
        """Hand ``group``'s frames to ``consumer`` from now on. Joins the layer group when the
        process holds no socket of it yet, or when no upkeep renews it (``RENEW_INTERVAL`` 0: then
        on every call, as a socket joining on its own did). Raises the layer's error when it
        cannot join within ``LAYER_WAIT_TIMEOUT``."""
        channel = await self.open()
        members = self.members.setdefault(group, set())
        if members and self.keeper is not None and not self.keeper.done():
            # The process is in the group already, and its upkeep keeps it there (renewed every
            # RENEW_INTERVAL): no Redis round trip for the group's second and later sockets, which
            # a reconnection storm of thousands of pages would otherwise pay one each.
            members.add(consumer)
            return
        # A member before the layer confirms: frames that arrive meanwhile wait in the socket's
        # list (it is holding, see TurboStreamsConsumer.receive) and are checked when written.
        members.add(consumer)
        try:
            await pooled_call(self.layer.group_add, group, channel)
        except BaseException:
            self._drop(group, consumer)
            raise

    async def renew(self, group: str, deadline: float) -> None:
        """A socket's heartbeat renewal: nothing to do while :meth:`upkeep` renews for the process."""
        if self.keeper is not None and not self.keeper.done():
            return
        if self.channel is not None and self.members.get(group):
            await pooled_call(self.layer.group_add, group, self.channel, deadline=deadline)

    async def leave(self, groups: list[str], consumer: TurboStreamsConsumer, who: str) -> None:
        """Stop handing ``groups`` to ``consumer``; the process leaves the groups no socket of it
        holds any more. Never raises (see :func:`leave`)."""
        empty = [group for group in groups if self._drop(group, consumer)]
        channel = self.channel
        if not empty or channel is None:
            return
        await leave(self.layer, empty, channel, who)
        for group in empty:
            if self.members.get(group) and self.channel == channel:  # a socket joined meanwhile
                try:
                    await pooled_call(self.layer.group_add, group, channel)
                except Exception as exc:
                    logger.warning("could not join %s again for this process's sockets (%r); "
                                   "their heartbeat retries", group, exc)
        if not self.members:
            await self.close(channel)

    async def close(self, channel: str) -> None:
        """Close the process's channel once no socket holds a group: a process whose sockets all
        closed keeps nothing in Redis (no subscription, no channel). The next join opens another."""
        async with self.opening:
            if self.members or self.channel != channel:
                return
            self.channel = None  # joins from now on wait for the lock and open a new one
            keeper, self.keeper = self.keeper, None
            if keeper is not None:
                keeper.cancel()
            self.received.clear()
            self.behind.clear()
            reader, self.reader = self.reader, None
            if reader is not None:
                # Wait for the read to unwind before forgetting the channel: channels_redis'
                # core layer cleans its buffer of the channel on cancel, and raises (leaving its
                # process-wide receive lock taken, so every later read hangs) if it is gone.
                reader.cancel()
                await asyncio.wait([reader])
            await forget(self.layer, channel)

    def _drop(self, group: str, consumer: TurboStreamsConsumer) -> bool:
        """Remove ``consumer`` from ``group``; whether no socket of the process holds it now."""
        members = self.members.get(group)
        if members is None:
            return False
        members.discard(consumer)
        if members:
            return False
        del self.members[group]
        self.received.pop(group, None)
        self.behind.pop(group, None)
        return True

    async def read(self, channel: str) -> None:
        """Hand every message of the process's channel to the sockets of its group; waits out an
        unreachable layer (logged once per outage) and never ends before the loop does."""
        delay = 0.05
        while True:
            try:
                message: dict[str, Any] = await self.layer.receive(channel)
            except LAYER_ERRORS as exc:
                if not self.layer_down:
                    self.layer_down = True
                    logger.warning("could not read this process's frames from the channel layer (%r); retrying", exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RECEIVE_BACKOFF_MAX)
                continue
            except Exception:  # a safety net: one bad message must not stop every socket's frames
                logger.exception("reading this process's frames from the channel layer failed; retrying")
                await asyncio.sleep(delay)
                continue
            if self.layer_down:
                self.layer_down = False
                logger.info("the channel layer answers again for this process's frames; joining its "
                            "groups again and checking what they missed")
                self.wake.set()  # rejoin and check now, not at the next interval
            delay = 0.05
            group = message.get("group")
            members = self.members.get(group) if isinstance(group, str) else None
            if members:
                self.note(message)
                for consumer in members:
                    consumer.push(message)

    def note(self, message: dict[str, Any]) -> None:
        """Remember the position of a numbered frame handed to the sockets (see :meth:`audit`)."""
        group, epoch, offset = message.get("group"), message.get("epoch"), message.get("offset")
        if isinstance(group, str) and isinstance(epoch, str) and isinstance(offset, int):
            self.received[group] = history.Position(epoch, offset)

    async def upkeep(self, channel: str, interval: float) -> None:
        """Every ``interval`` seconds, or when woken (the layer answers again): join the process's
        groups again and check them for missed frames. Never ends before :meth:`close`."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except TimeoutError:
                pass
            woken = self.wake.is_set()
            self.wake.clear()
            deadline = loop.time() + interval
            try:
                if self.membership_in_redis or woken:
                    for group in list(self.members):
                        await pooled_call(self.layer.group_add, group, channel, deadline=deadline)
                if history.enabled(self.layer):
                    await self.audit()
            except LAYER_ERRORS as exc:
                logger.debug("the upkeep of this process's groups failed (%r); next in %.1f s", exc, interval)
                if woken:
                    self.wake.set()  # the layer is back only in part: try again
                    await asyncio.sleep(min(interval, 0.2))
            except Exception:  # a safety net: the upkeep must outlive any layer bug
                logger.exception("the upkeep of this process's channel-layer groups failed")

    async def audit(self) -> None:
        """Compare where each group's stream stands with what the reader received (see the class)."""
        for group in list(self.members):
            now = await layer_call(history.current, self.layer, group)
            received = self.received.get(group)
            if now is None or received is None:
                # Nothing numbered since Redis lost the offsets (the next frame's new epoch tells
                # the pages), or nothing received yet: what the process has now is the baseline.
                if now is not None:
                    self.received[group] = now
                self.behind.pop(group, None)
                continue
            if now.epoch == received.epoch and now.offset <= received.offset:
                self.behind.pop(group, None)
                continue
            mark = self.behind.get(group)
            if mark is None or not _after(mark, received):
                self.behind[group] = now  # frames may still be on their way: look again next time
                continue
            del self.behind[group]
            await self.catch_up(group, received, now)

    async def catch_up(self, group: str, received: history.Position, now: history.Position) -> None:
        """Hand the group's sockets the frames this process missed after ``received``, in order,
        from the history; or tell them to reset when the history cannot cover the gap."""
        missed = await layer_call(history.since, self.layer, group, received)
        members = self.members.get(group, set())
        logger.info(
            "this process missed frames of %s (received %s/%d, the stream is at %s/%d): %s for %d "
            "socket(s)", group, received.epoch, received.offset, now.epoch, now.offset,
            f"a reset ({missed.reset})" if missed.reset else f"{len(missed.frames)} frame(s) replayed",
            len(members),
        )
        if missed.reset is not None:
            reset = {"type": RESET_MESSAGE_TYPE, "group": group, "reason": missed.reset}
            for consumer in members:
                consumer.push(reset)
            if missed.current is not None:
                self.received[group] = missed.current
            return
        for offset, data in missed.frames:
            frame = {"type": MESSAGE_TYPE, "group": group, "data": data, "epoch": received.epoch, "offset": offset}
            self.note(frame)
            for consumer in members:
                consumer.push(frame)


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, FanOut]] = weakref.WeakKeyDictionary()


class TurboStreamsConsumer(AsyncWebsocketConsumer):
    """Route it at ``ws/`` (see :mod:`turbo_async.routing`), inside ``AuthMiddlewareStack``."""

    closing = False  # set when the socket is closed for abuse
    layer_down = False  # set while the channel layer fails, so that an outage is logged once
    heartbeat: asyncio.Task[None] | None = None
    fan_out = True
    """Receive the groups' frames through the process's :class:`FanOut` (False: each socket
    joins the groups with its own channel, as Channels does)."""
    fanout: FanOut | None = None  # set in __call__ when fan_out is on
    holding = False  # while a client message is handled, frames wait (order after a replay)
    closer: asyncio.Future[None] | None = None  # the close of a socket too far behind, or abusive
    frame_send: ASGISend | None = None  # see past_session_saving
    ranges = False
    """The client applies messages carrying several frames (``"from_offset"``): it said so with
    ``"ranges": true`` in a subscribe, as turbo-async.js does. Frames that queued up for it then go
    out as one message (:meth:`coalesce`); any other client gets one message per frame."""

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
        channel_name = await open_channel(layer, scope, send)
        if channel_name is None:
            return
        self.channel_name = channel_name
        # Channels' stubs type channel_receive as an ASGI receive; it returns layer messages.
        self.channel_receive = self.layer_receive  # type: ignore[assignment]
        self.base_send = send
        self.frame_send = past_session_saving(send)
        writer: asyncio.Task[None] | None = None
        if self.fan_out:
            self.fanout = FanOut.of(layer)
            self.pending: deque[dict[str, Any]] = deque()
            self.ready = asyncio.Event()
            writer = asyncio.create_task(self.write_frames())
        sources: list[Any] = [receive, self.layer_receive]
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass
        finally:
            if writer is not None:
                writer.cancel()
            await forget(layer, self.channel_name)

    def push(self, message: dict[str, Any]) -> None:
        """A message of one of this socket's groups, from the process's :class:`FanOut`: queued
        for :meth:`write_frames`. A socket ``SOCKET_BACKLOG`` messages behind is closed."""
        if self.closing:
            return
        if len(self.pending) >= SOCKET_BACKLOG:
            self.closing = True
            self.pending.clear()
            logger.warning(
                "closed the WebSocket from %s with code %d: %d frames were waiting to be written "
                "to it (it reads too slowly); the page reconnects and catches up",
                peer(self.scope), TRY_AGAIN_LATER, SOCKET_BACKLOG,
            )
            self.closer = closing(self.close(code=TRY_AGAIN_LATER))
            return
        self.pending.append(message)
        if not self.holding:
            self.ready.set()

    async def write_frames(self) -> None:
        """Send what :meth:`push` queued, in order; one long-lived task per socket."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.pending and not self.holding:
                message = self.coalesce(self.pending.popleft())
                try:
                    await self.dispatch(message)
                except OSError:  # the client is gone; disconnect() follows
                    self.pending.clear()
                    return
                except Exception:  # a handler's bug must not stop this socket's frames
                    logger.exception("sending a %r message to the WebSocket from %s failed",
                                     message.get("type"), peer(self.scope))

    def coalesce(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` and the frames of its group queued right behind it, as one message.

        A web process that cannot write every frame to every socket as fast as frames come
        (hundreds of sockets on one stream) would queue them, and each frame would then wait for
        all the writes before it: the delay would grow with the load. Instead, the frames that
        queued up for a socket meanwhile go out in one message, whose ``data`` holds their
        ``<turbo-stream>`` elements in order (Turbo applies them in order), with the offset of the
        last and ``"from_offset"`` the first: one write per socket however many frames waited.

        Only for a client that said it applies such messages (:attr:`ranges`), for numbered
        frames following, without a gap, the last frame this socket was sent (so the client holds
        everything before them), up to ``MERGE_FRAMES`` frames and ``MERGE_BYTES`` bytes."""
        if (
            not self.ranges or not self.pending or message.get("type") != MESSAGE_TYPE
            or not isinstance(message.get("data"), str)
        ):
            return message
        group, epoch, first = message.get("group"), message.get("epoch"), message.get("offset")
        sent = self.sent.get(group) if isinstance(group, str) else None
        if sent is None or not isinstance(first, int) or sent.epoch != epoch or first != sent.offset + 1:
            return message
        parts = [message["data"]]
        size = len(parts[0])
        last = first
        while self.pending and len(parts) < MERGE_FRAMES:
            following = self.pending[0]
            data = following.get("data")
            if (
                following.get("type") != MESSAGE_TYPE or following.get("group") != group
                or following.get("epoch") != epoch or following.get("offset") != last + 1
                or not isinstance(data, str) or size + len(data) > MERGE_BYTES
            ):
                break
            self.pending.popleft()
            parts.append(data)
            size += len(data)
            last += 1
        if last == first:
            return message
        return {**message, "data": "".join(parts), "offset": last, "from_offset": first}

    async def layer_receive(self) -> dict[str, Any]:
        """The next message of this socket's channel; waits out an unreachable layer."""
        delay = 0.05
        while True:
            try:
                message: dict[str, Any] = await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                self.layer_failed("could not read from the channel layer", exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RECEIVE_BACKOFF_MAX)
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
        # group -> the last offset a replay sent: live copies up to it are dropped.
        self.replayed: dict[str, int] = {}
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
            self.heartbeat = asyncio.create_task(self.beat(settings.HEARTBEAT_INTERVAL))

    async def beat(self, interval: float) -> None:
        """Every ``interval`` seconds, ping the client and join the groups again. (Not at
        connect: a turbo-django client's first message must stay the server's answer.)"""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.send(json.dumps({"type": PING, "t": round(time.time(), 3), "interval": interval}))
            except OSError:  # the client is gone; disconnect() follows
                return
            deadline = loop.time() + interval  # a renewal never outlasts the next beat
            for group in list(self.subscriptions):
                try:
                    if self.fanout is not None:
                        await self.fanout.renew(group, deadline)
                    else:
                        await pooled_call(self.channel_layer.group_add, group, self.channel_name, deadline=deadline)
                except LAYER_ERRORS as exc:
                    self.layer_failed("could not renew the channel-layer groups", exc)
                    break
                except Exception:  # a safety net: the heartbeat must outlive any layer bug
                    logger.exception("renewing the groups of the WebSocket from %s failed", peer(self.scope))
                    break
                else:
                    self.layer_recovered()
            await self.audit(interval)

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
        queued = getattr(self, "pending", None)  # the fan-out writer's list (fan_out on)
        if self.writing or queued or asyncio.get_running_loop().time() - self.last_frame < interval:
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
            if now is None or sent is None:
                # Nothing numbered since Redis lost the offsets (the next frame's new epoch tells
                # the client), or nothing sent yet: what the socket has now is the baseline.
                if now is not None:
                    self.sent[group] = now
                self.behind.pop(group, None)
                continue
            if now.epoch == sent.epoch and now.offset <= sent.offset:
                self.behind.pop(group, None)
                continue
            mark = self.behind.get(group)
            if mark is None or (sent.epoch == mark.epoch and sent.offset >= mark.offset):
                self.behind[group] = now  # frames may still be on their way: look again next beat
                continue
            del self.behind[group]
            logger.info(
                "the WebSocket from %s missed frames of %s (sent %s/%d, the stream is at %s/%d); "
                "replaying them", peer(self.scope), group, sent.epoch, sent.offset, now.epoch, now.offset,
            )
            for signed_name in list(names):
                await self.replay(group, signed_name, sent)
            self.sent[group] = now

    async def disconnect(self, code: int) -> None:
        metrics.socket_closed(code, getattr(self, "subscriptions", None))
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
        groups: list[str] = list(getattr(self, "subscriptions", {}))
        self.subscriptions = {}
        refusals: RefusalLog | None = getattr(self, "refusals", None)
        if refusals is not None:
            refusals.summary()
        await self.leave_groups(groups)

    async def leave_groups(self, groups: list[str]) -> None:
        if self.fanout is not None:
            await self.fanout.leave(groups, self, peer(self.scope))
        else:
            await leave(self.channel_layer, groups, self.channel_name, peer(self.scope))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return  # closed for abuse: what still arrives before the close handshake is dropped
        # The rate first: it costs a clock read, and an abuser is cut off before anything is parsed.
        if not self.budget.take():
            await self.close_for_abuse()
            return
        self.holding = True
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
        finally:
            self.holding = False
            if self.fanout is not None and self.pending:
                self.ready.set()

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
        self.closer = closing(self.close(code=POLICY_VIOLATION))

    async def handle(self, text_data: str | None) -> None:
        settings = conf.get()
        if text_data is None:
            await self.error("binary messages are not supported; send JSON text")
            return
        limit = settings.MAX_MESSAGE_BYTES
        # A str has at least one UTF-8 byte per character and at most four: most sizes are known
        # without encoding. "surrogatepass": a lone surrogate must not raise (browsers never send one).
        length = len(text_data)
        if length > limit or (
            length * 4 > limit and len(text_data.encode("utf-8", "surrogatepass")) > limit
        ):
            await self.error(f"message larger than {limit} bytes")
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
            self.refusals.warning("refused a subscription: %s", exc)
            # The client refreshes the page on this code: only a new render signs anew.
            code = SIGNATURE_EXPIRED if str(exc).startswith("signature expired") else None
            metrics.refused(code or "invalid_signature")
            await self.error(f"invalid signed_channel_name: {exc}", signed_name, code=code)
            return
        group = group_name(stream_name, args, kwargs)
        if message_type == UNSUBSCRIBE:
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
            seen = history.parse(content.get("epoch"), content.get("offset"))
        except history.BadOffset as exc:
            metrics.refused(BAD_OFFSET)
            await self.error(f"invalid position: {exc}", signed_name, code=BAD_OFFSET)
            return
        allowed, reason = await self.allowed(stream_name, args, kwargs)
        if not allowed:
            metrics.refused(reason)
            await self.error(reason, signed_name)
            return
        if group not in self.subscriptions:
            try:
                if self.fanout is not None:
                    await self.fanout.join(group, self)
                else:
                    await pooled_call(self.channel_layer.group_add, group, self.channel_name)
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
        if content.get("ranges") is True:
            self.ranges = True
        await self.send(json.dumps({"type": "subscribed", "signed_channel_name": signed_name}))
        if seen is not None and history.enabled(self.channel_layer):
            self.sent.setdefault(group, seen)
            await self.replay(group, signed_name, seen)

    async def replay(self, group: str, signed_name: str, seen: history.Position) -> None:
        """Send what the client missed after ``seen``, in order, before any live frame (live
        frames wait until this handler returns: in the socket's list, see :meth:`receive`, or
        in its channel); or tell it to refresh."""
        try:
            missed = await shared_since(self.channel_layer, group, seen)
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
            self.replayed[group] = max(self.replayed.get(group, 0), missed.frames[-1][0])
            last = history.Position(seen.epoch, missed.frames[-1][0])
            if _after(last, self.sent.get(group)):
                self.sent[group] = last

    async def allowed(self, stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, str]:
        """Whether the scope's user may subscribe. A stream open to everyone (``Stream``'s own
        ``user_passes_test`` and a constructor of ours) is answered here; any other is rebuilt
        and asked in Django's database thread, one subscribe at a time."""
        try:
            stream_class = stream_registry.get_stream(stream_name)
        except UnknownStream:
            self.refusals.warning("subscription to unknown stream %r", stream_name)
            return False, f"unknown stream {stream_name!r}"
        if open_to_everyone(stream_class):
            return True, ""
        return await self.check(stream_name, args, kwargs)

    @database_sync_to_async
    def check(self, stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, str]:
        """Rebuild the stream and ask its ``user_passes_test`` with the scope's user."""
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
            self.refusals.exception("could not check the subscription to %r", stream_name)
            return False, "subscription check failed"
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
        """Frames from the layer go straight to :meth:`turbo_stream`. They touch no database, and
        Channels' own dispatch runs ``close_old_connections()`` in a worker thread before every
        handler: about half of a web process's time per frame and socket (docs/benchmarks.rst)."""
        if message.get("type") == MESSAGE_TYPE:
            await self.turbo_stream(message)
            return
        if message.get("type") == RESET_MESSAGE_TYPE:
            await self.turbo_reset(message)
            return
        await super().dispatch(message)

    async def turbo_stream(self, event: dict[str, Any]) -> None:
        """Frames from the layer: sent once per signed name this socket subscribed with."""
        group = event.get("group", "")
        offset = event.get("offset")
        if isinstance(offset, int) and offset <= self.replayed.get(group, 0):
            return  # already sent by a replay
        epoch = event.get("epoch")
        self.last_frame = asyncio.get_running_loop().time()
        self.writing = True
        try:
            first = event.get("from_offset")
            send: ASGISend = self.frame_send or self.base_send  # type: ignore[assignment]
            for signed_name in self.subscriptions.get(group, ()):
                text = frame_message(signed_name, event["data"], epoch, offset, first)
                await send({"type": "websocket.send", "text": text})
                metrics.frame_sent(len(text), event.get("committed"))
        finally:
            self.writing = False
        if isinstance(offset, int) and isinstance(epoch, str):
            self.sent[group] = history.Position(epoch, offset)

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
        if code is not None:
            reply["code"] = code
        await self.send(json.dumps(reply))


async def open_channel(layer: Any, scope: Any, send: Any) -> str | None:
    """The socket's channel name, or ``None`` after refusing the handshake. With
    ``RedisChannelLayer`` a random name (no Redis round trip); ``RedisPubSubChannelLayer``
    subscribes to it in Redis, which fails while Redis is unreachable: that is retried for up to
    ``NEW_CHANNEL_WAIT`` seconds (a Redis restart takes less), then the handshake is refused
    (HTTP 403) and the client reconnects with backoff, instead of "Exception in ASGI application"."""
    deadline = asyncio.get_running_loop().time() + min(NEW_CHANNEL_WAIT, conf.get().LAYER_WAIT_TIMEOUT)
    try:
        name: str = await pooled_call(new_channel, layer, deadline=deadline)
    except LAYER_ERRORS as exc:
        logger.warning(
            "refused a WebSocket from %s: the channel layer could not open a channel for it (%r); "
            "the page reconnects", peer(scope), exc,
        )
        await send({"type": "websocket.close", "code": 1011})
        return None
    return name


def open_to_everyone(stream_class: type[Stream]) -> bool:
    """Whether subscribing to ``stream_class`` needs no question to the database: it keeps
    ``Stream.user_passes_test`` (everyone may) and builds without code of the project's own."""
    return stream_class.user_passes_test is Stream.user_passes_test and stream_class.__init__ in (
        object.__init__, ModelStream.__init__,
    )


@lru_cache(maxsize=256)
def _encoded(data: str) -> str:
    return json.dumps(data)


def frame_message(
    signed_name: str, data: str, epoch: Any = None, offset: Any = None, from_offset: Any = None
) -> str:
    """``json.dumps({"signed_channel_name": signed_name, "data": data})``, byte for byte, with
    the frames JSON-encoded once per process however many sockets of the process receive them
    (the cache's key is the frames' text: with the pub/sub layer, one shared string); with the
    batch's ``"epoch"`` and ``"offset"`` after them when it has them (a turbo-django client
    ignores extra fields), and ``"from_offset"``, the first offset, when ``data`` holds several
    numbered frames (:meth:`TurboStreamsConsumer.coalesce`)."""
    run = isinstance(from_offset, int) and isinstance(offset, int) and from_offset < offset
    # A run's data is the socket's own (up to MERGE_BYTES): encoded here, not kept in the cache of
    # the frames every socket shares, which would otherwise hold up to 256 such strings.
    encoded = json.dumps(data) if run else _encoded(data)
    head = f'{{"signed_channel_name": {_encoded_name(signed_name)}, "data": {encoded}'
    if not (isinstance(epoch, str) and isinstance(offset, int)):
        return head + "}"
    tail = f', "from_offset": {from_offset}' if run else ""
    return f'{head}, "epoch": {json.dumps(epoch)}, "offset": {offset}{tail}}}'


@lru_cache(maxsize=4096)
def _encoded_name(signed_name: str) -> str:
    return json.dumps(signed_name)


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


async def leave(layer: Any, groups: list[str], channel_name: str, who: str) -> None:
    """Discard ``channel_name`` from ``groups``; never raises (it runs as a socket closes, when
    an exception would only reach the ASGI server's log). A group that cannot be left within
    ``LAYER_WAIT_TIMEOUT`` is reported in one line for the socket; channels_redis drops the
    member when the group expires (``group_expiry``)."""
    failed: list[str] = []
    error: BaseException | None = None
    # One deadline for all the groups of the socket: with Redis down, 100 groups must not wait
    # 100 times LAYER_WAIT_TIMEOUT.
    deadline = asyncio.get_running_loop().time() + conf.get().LAYER_WAIT_TIMEOUT
    for group in groups:
        try:
            await pooled_call(layer.group_discard, group, channel_name, deadline=deadline)
        except Exception as exc:  # whatever the layer raises, the socket is closing
            failed.append(group)
            error = exc
    if failed:
        logger.error(
            "could not leave %d of %d channel-layer groups of the closed WebSocket from %s (%r); "
            "frames to them are still written for it until the groups expire",
            len(failed), len(groups), who, error,
        )


_positions: dict[str, tuple[float, history.Position | None]] = {}
"""group -> (loop time read, position): the streams' positions, shared by the sockets of a process."""


async def stream_position(layer: Any, group: str, max_age: float) -> history.Position | None:
    """Where ``group``'s stream stands, read from Redis at most once per ``max_age`` seconds per
    process (every socket of a stream audits it on each heartbeat)."""
    now = asyncio.get_running_loop().time()
    cached = _positions.get(group)
    if cached is not None and now - cached[0] < max_age:
        return cached[1]
    position: history.Position | None = await layer_call(history.current, layer, group)
    if len(_positions) > 10_000:  # streams come and go: keep the cache from growing for ever
        _positions.clear()
    _positions[group] = (now, position)
    return position


_reading: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, history.Position], asyncio.Future[history.Replay]]
] = weakref.WeakKeyDictionary()


async def shared_since(layer: Any, group: str, seen: history.Position) -> history.Replay:
    """:func:`history.since` through the process's gate (:func:`pooled_call`), one read for all the
    sockets that ask for the same group and position at the same time: when a web process goes
    away, its pages come back together, most of a stream's pages from the same position, and each
    would otherwise make its own reads (beyond the connection pool's limit, measured: pages then
    refreshed with "the history cannot be read now")."""
    reading = _reading.setdefault(asyncio.get_running_loop(), {})
    key = (group, seen)
    shared = reading.get(key)
    if shared is None:
        shared = reading[key] = asyncio.ensure_future(pooled_call(history.since, layer, group, seen))
        shared.add_done_callback(lambda done: reading.pop(key, None))
    return await asyncio.shield(shared)


def _after(position: history.Position, other: history.Position | None) -> bool:
    """Whether ``position`` is past ``other`` (a position of another epoch counts as past)."""
    return other is None or position.epoch != other.epoch or position.offset > other.offset


def closing(close: Awaitable[None]) -> asyncio.Future[None]:
    """A close scheduled rather than awaited; its error (the client went away first) is read here
    so that asyncio does not log it as never retrieved."""
    future = asyncio.ensure_future(close)
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


async def new_channel(layer: Any) -> str:
    """``layer.new_channel()``, leaving nothing behind when it fails.

    channels_redis' ``RedisPubSubChannelLayer`` makes the new channel's queue before it
    ``SUBSCRIBE``s, and keeps the queue when the ``SUBSCRIBE`` fails: while Redis is unreachable,
    every retry of a reconnecting page's handshake left one queue in the web process for ever.
    Here the name is made as channels_redis makes it, and its queue dropped if the subscribe
    raises. Any other layer (or another version without those internals) is called as it is."""
    loop_layer: Any = layer._get_layer() if hasattr(layer, "_get_layer") else None
    channels = getattr(loop_layer, "channels", None)
    subscribe = getattr(loop_layer, "_subscribe_to_channel", None)
    if not isinstance(channels, dict) or subscribe is None or not isinstance(getattr(loop_layer, "prefix", None), str):
        name: str = await layer.new_channel()
        return name
    name = f"{loop_layer.prefix}specific.{uuid.uuid4().hex}"
    try:
        await subscribe(name)
    except BaseException:
        channels.pop(name, None)
        raise
    return name


FORGET_AGAIN_AFTER = 5.0
"""Seconds after a socket closed when channels_redis' ``core`` layer's buffer for its channel is
dropped a second time (frames sent to its groups before it left them may still be on their way)."""


async def forget(layer: Any, channel_name: str) -> None:
    """Drop what a channels_redis layer keeps in this process for the channel of a closed socket.

    Channels has no call for "this channel is gone": a layer cleans up when the consumer's pending
    ``receive()`` is cancelled, and misses it when the cancel comes before that call started or
    after a message was put aside for it (measured: about half of closed sockets, with frames
    flowing). What each layer then keeps for ever, per closed socket:

    - ``RedisPubSubChannelLayer``: the channel's queue and its Redis ``SUBSCRIBE`` (the connection
      stays subscribed, and redis-py subscribes it again after every reconnection);
    - ``RedisChannelLayer``: the channel's entry in ``receive_buffer``, with the messages put
      aside for it.

    Both are internals of channels_redis 4 (docs/architecture.rst, "Pitfalls"); any other layer
    is left alone. Never raises: it runs as the socket closes."""
    try:
        loop_layer: Any = layer._get_layer() if hasattr(layer, "_get_layer") else None  # pubsub: one per loop
        channels = getattr(loop_layer, "channels", None)
        if isinstance(channels, dict):
            if channels.pop(channel_name, None) is not None:
                await asyncio.wait_for(
                    loop_layer._get_shard(channel_name).unsubscribe(channel_name),
                    conf.get().LAYER_WAIT_TIMEOUT,
                )
            return
        buffers = getattr(layer, "receive_buffer", None)
        if isinstance(buffers, dict):
            buffers.pop(channel_name, None)
            asyncio.get_running_loop().call_later(FORGET_AGAIN_AFTER, buffers.pop, channel_name, None)
    except Exception as exc:  # Redis down: the subscription goes with the connection
        logger.debug("could not drop the layer's state of the closed channel %s (%r)", channel_name, exc)


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error frames echo what the client sent)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
