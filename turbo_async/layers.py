"""Layer 1: everything turbo_async does with the channel layer itself. With
:mod:`turbo_async.placement` (where a group lives) and :func:`turbo_async.history.client` (a
client of that shard) it is where channels_redis' internals are touched, each pinned by
``tests/test_layers.py`` so that an upgrade breaks there, loudly.

- the errors of an unreachable layer (:data:`LAYER_ERRORS`), a call tried once more on a fresh
  pooled connection (:func:`layer_call`), and the calls of a process's sockets through one gate
  with backoff (:func:`pooled_call`);
- the backoff every retry loop of the web side shares (:class:`Backoff`);
- opening a socket's channel without leaving a queue behind (:func:`new_channel`), forgetting a
  closed socket's state (:func:`forget`), leaving groups without raising (:func:`leave`);
- the drops channels_redis only logs (:class:`DropCounter`) and the pub/sub layer's outage
  tracebacks made one line (:class:`PubSubOutageLog`).

Where a stream's group lives on a sharded layer is :mod:`turbo_async.placement`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import conf

try:  # channels_redis's connection errors, when it is installed
    from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

    _REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover
    _REDIS_ERRORS = ()

LAYER_ERRORS: tuple[type[BaseException], ...] = (
    # asyncio.TimeoutError (what asyncio.wait_for raises) is TimeoutError only from Python 3.11.
    OSError, TimeoutError, asyncio.TimeoutError, *_REDIS_ERRORS,
)
"""Errors of an unreachable channel layer: retried, never a hook's fault."""

logger = logging.getLogger("turbo_async")

RECEIVE_BACKOFF_MAX = 2.0
"""Cap, in seconds, of the wait between attempts to read from an unreachable channel layer."""


class Backoff:
    """Exponential backoff with jitter for a retry loop: :meth:`wait` sleeps ``delay`` times 0.5 to
    1, then doubles ``delay`` up to ``cap``; :meth:`reset` after a success. Jitter: callers that
    failed together must not come back together."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = self.delay = initial
        self.cap = cap

    def next(self) -> float:
        """The next wait (jittered), advancing the delay."""
        wait = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, self.cap)
        return wait

    async def wait(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.delay = self.initial


async def layer_call(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await a channel-layer call, once more on a connection error: after a Redis restart the
    first command on each pooled connection fails, and the pool then holds a fresh one. After
    that, the caller's retry policy takes over."""
    try:
        return await function(*args)
    except LAYER_ERRORS:
        return await function(*args)


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
    backoff = Backoff(0.02, 1.0)
    while True:
        async with _gate():
            try:
                return await layer_call(function, *args)
            except LAYER_ERRORS:
                if loop.time() + backoff.delay > deadline:
                    raise
        await backoff.wait()


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


_drops: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("turbo_async_drops", default=None)

CHANNELS_REDIS_LOGGER = "channels_redis.core"
OVER_CAPACITY = "%s of %s channels over capacity in group %s"
"""channels_redis 4's log message for a ``group_send`` that found full channels."""


@contextmanager
def counting_drops() -> Iterator[list[int]]:
    """The drops channels_redis reports (:class:`DropCounter`) while the block runs, in this
    context: one count per ``group_send`` that found full channels."""
    DropCounter.install()
    drops: list[int] = []
    token = _drops.set(drops)
    try:
        yield drops
    finally:
        _drops.reset(token)


class DropCounter(logging.Filter):
    """Counts channels_redis' "over capacity" records of the send running in this context.

    channels_redis reports a drop only as an INFO record; to see it when INFO is not logged, the
    logger is set to INFO and this filter hides again what its handlers would not have shown
    (records below the level the logger had)."""

    def __init__(self, shown_from: int) -> None:
        super().__init__()
        self.shown_from = shown_from

    @classmethod
    def install(cls) -> DropCounter:
        log = logging.getLogger(CHANNELS_REDIS_LOGGER)
        for existing in log.filters:
            if isinstance(existing, DropCounter) and log.isEnabledFor(logging.INFO):
                return existing
        counter = cls(log.getEffectiveLevel())
        for existing in [f for f in log.filters if isinstance(f, DropCounter)]:
            log.removeFilter(existing)  # logging was reconfigured since: start over
        log.addFilter(counter)
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)
        return counter

    def filter(self, record: logging.LogRecord) -> bool:
        drops = _drops.get()
        if drops is not None and record.msg == OVER_CAPACITY and isinstance(record.args, tuple) and record.args:
            count: Any = record.args[0]
            if isinstance(count, int):
                drops.append(count)
        return record.levelno >= self.shown_from


PUBSUB_LOGGER = "channels_redis.pubsub"
PUBSUB_LOG_INTERVAL = 30.0
"""Seconds between two log lines of one kind about a pub/sub layer's lost Redis connection."""


class PubSubOutageLog(logging.Filter):
    """Turns channels_redis pub/sub's tracebacks for a lost Redis connection into one WARNING line
    per ``PUBSUB_LOG_INTERVAL``.

    While Redis is unreachable, ``RedisPubSubChannelLayer``'s receive task logs "Unexpected
    exception in receive task" with a traceback about every second, and so does every socket
    that closes meanwhile; redis-py then reconnects and subscribes again to this process's
    channels and groups by itself. The outage is worth one line that says so, not a traceback
    per second; any other error keeps its traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}
        self.hidden: dict[str, int] = {}

    @classmethod
    def install(cls) -> None:
        log = logging.getLogger(PUBSUB_LOGGER)
        if not any(isinstance(existing, cls) for existing in log.filters):
            log.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, LAYER_ERRORS):
            return True
        what = record.getMessage().rstrip(":")
        now = time.monotonic()
        if now - self.last.get(what, -PUBSUB_LOG_INTERVAL) < PUBSUB_LOG_INTERVAL:
            self.hidden[what] = self.hidden.get(what, 0) + 1
            return False
        hidden = self.hidden.pop(what, 0)
        self.last[what] = now
        record.msg = (
            "channels_redis pub/sub lost Redis (%s: %s)%s; it reconnects and subscribes again to "
            "this process's groups by itself; frames published meanwhile do not reach this "
            "process, and its pages catch up by offset or refresh"
        )
        more = f", {hidden} more since the last line" if hidden else ""
        record.args = (what, f"{type(error).__name__}: {error}", more)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


PubSubOutageLog.install()


