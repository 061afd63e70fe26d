"""Layer 2: getting frames to the Channels layer.

Inside a broadcast (:func:`collect`) frames are gathered per stream into an :class:`Outgoing`, and
the worker sends it with :func:`deliver`: one ``group_send`` per stream. Anywhere else a frame is
sent at once. While a test records (:mod:`turbo_async.recording`), messages go to its recorders.

Each process keeps one event loop and sends every ``group_send`` through it:
channels_redis keeps its connection pool per event loop, so one long-lived loop means one pool
per process (``async_to_sync`` per frame would make and close a loop each time, which
channels_redis 4 answers with "Event loop is closed").
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from . import conf, history, metrics, recording
from .frames import REFRESH, frame_markup
from .layers import LAYER_ERRORS, counting_drops, layer_call
from .protocol import MESSAGE_TYPE

logger = logging.getLogger("turbo_async")

@dataclass
class Outgoing:
    """The frames rendered by one broadcast, per group, in the order they were made."""

    frames: dict[str, list[str]] = field(default_factory=dict)
    stream_names: dict[str, str] = field(default_factory=dict)

    def add(self, group: str, stream_name: str, markup: str) -> None:
        self.frames.setdefault(group, []).append(markup)
        self.stream_names[group] = stream_name

    @property
    def frame_count(self) -> int:
        return sum(len(frames) for frames in self.frames.values())

    def messages(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for group, frames in self.frames.items():
            yield group, message(group, self.stream_names[group], "".join(frames))


_collecting: contextvars.ContextVar[Outgoing | None] = contextvars.ContextVar(
    "turbo_async_collecting", default=None
)


def message(group: str, stream_name: str, markup: str) -> dict[str, Any]:
    return metrics.stamped({"type": MESSAGE_TYPE, "group": group, "stream": stream_name, "data": markup})


@contextmanager
def collect() -> Iterator[Outgoing]:
    """Collect the frames sent inside the block instead of sending them; :func:`deliver` sends."""
    outgoing = Outgoing()
    token = _collecting.set(outgoing)
    try:
        yield outgoing
    finally:
        _collecting.reset(token)


def send(group: str, stream_name: str, markup: str) -> None:
    """Send one stream's markup now, or add it to the frames being collected."""
    outgoing = _collecting.get()
    if outgoing is not None:
        outgoing.add(group, stream_name, markup)
        return
    group_send(group, message(group, stream_name, markup))


class NotDelivered(Exception):
    """Some streams' frames could not be sent (their shard of the channel layer is unreachable);
    the others' were. ``streams`` maps each failed group to its stream's name."""

    def __init__(self, error: BaseException, streams: dict[str, str], dropped: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.streams = streams
        self.dropped = dropped


@metrics.timed_send
def deliver(outgoing: Outgoing) -> int:
    """Send collected frames: one ``group_send`` per stream. Returns how many deliveries the
    layer dropped because a receiving web process's channel was full (see :func:`group_send`).

    Every stream is tried, even after one failed: with a sharded layer one unreachable shard must
    not hold back the pages of the others. Raises :class:`NotDelivered` naming the streams that
    failed. Inside :func:`waited_since` with ``groups``, only those groups are sent (a retry sends
    what failed, not again what went out)."""
    only = _retrying_groups.get()
    dropped = 0
    failed: dict[str, str] = {}
    error: BaseException | None = None
    for group, msg in outgoing.messages():
        if only is not None and group not in only:
            continue
        try:
            dropped += group_send(group, msg) or 0
        except LAYER_ERRORS as exc:
            failed[group], error = outgoing.stream_names[group], exc
    if error is not None:
        raise NotDelivered(error, failed, dropped) from error
    return dropped


def mark_stale(group: str, stream_name: str) -> history.Position | None:
    """Make every page of ``group``'s stream refresh: frames of it were lost (a change whose frames
    could not be sent within ``DELIVERY_MAX_AGE``). With offsets, the stream gets a new epoch
    and a refresh frame numbered in it: a page sees the epoch change at that frame (or at its next
    heartbeat audit, or when it resubscribes) and refreshes; without, the refresh frame alone.
    Returns the new position (``None`` without offsets). Raises the layer's error when it is still
    unreachable."""
    position: history.Position | None = None
    if not recording.active():
        layer = channel_layer()
        if history.enabled(layer):
            position = _loop.run(
                layer_call(history.replace_epoch, layer, group), timeout=conf.get().DELIVERY_TIMEOUT
            )
    with waited_since(None):
        group_send(group, message(group, stream_name, frame_markup(REFRESH)))
    return position


def channel_layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    if layer is None:
        raise ImproperlyConfigured(
            "turbo_async needs a channel layer: set CHANNEL_LAYERS (channels_redis in production)."
        )
    return layer


def group_send(group: str, msg: dict[str, Any]) -> int:
    """Send ``msg`` to ``group``; the number of web processes it was dropped for (0 mostly).

    channels_redis drops a message for a web process whose channel already holds ``capacity``
    messages (100 by default: **per web process**, shared by all its sockets, since they all read
    one channel key of the process) and only logs it at INFO. The drop is found here by watching
    that log record while the send runs (:class:`DropCounter`), logged at WARNING with the stream
    and the count, and returned so the task result shows it (Flower)."""
    if not recording.record(group, msg):
        return 0
    layer = channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        # The in-memory layer lives on the caller's loop (tests, runserver): hand it over there.
        async_to_sync(layer.group_send)(group, msg)
        return 0
    dropped: int = _loop.run(
        send_numbered(layer, group, msg, _waited_since.get()), timeout=conf.get().DELIVERY_TIMEOUT
    )
    if dropped:
        metrics.capacity_dropped(dropped)
        logger.warning(
            "the channel layer dropped the frames of %s (%d publication, offset %s) for %d web "
            "process(es): their channel was full (CHANNEL_LAYERS capacity, per web process); "
            "their pages catch up or refresh",
            msg.get("stream", group), 1, msg.get("offset", "-"), dropped,
        )
    return dropped


_waited_since: contextvars.ContextVar[float | None] = contextvars.ContextVar("turbo_async_waited_since", default=None)
_retrying_groups: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "turbo_async_retrying_groups", default=None
)


@contextmanager
def waited_since(since: float | None, groups: list[str] | None = None) -> Iterator[None]:
    """Frames sent inside the block belong to a change that has waited for the channel layer since
    ``since`` (a Unix time; ``None``: it did not wait). Each of its streams that numbered other
    publications meanwhile gets a refresh instead (:func:`send_numbered`): sent now, its frames would
    land after those of later changes, and the page would show rows out of order. ``groups``:
    the only groups :func:`deliver` sends (those that failed before; ``None``: all)."""
    token = _waited_since.set(since)
    only = _retrying_groups.set(frozenset(groups) if groups is not None else None)
    try:
        yield
    finally:
        _retrying_groups.reset(only)
        _waited_since.reset(token)


async def send_numbered(
    layer: BaseChannelLayer, group: str, msg: dict[str, Any], since: float | None = None
) -> int:
    """``group_send``, with the publication first given its stream's ``(epoch, offset)`` and kept in
    the stream's history (:mod:`turbo_async.history`) when the layer is Redis. A retried task
    numbers its publication again: the client applies both copies in order, and frames converge.
    Returns how many web processes the layer dropped it for.

    Frames that waited for the layer (:func:`waited_since`) go out only if no other publication of the
    stream was numbered meanwhile; otherwise the stream gets a new epoch and a refresh frame, and
    every page of it refreshes. ``since``: when they began waiting (see :func:`waited_since`)."""
    if msg.get("type") == MESSAGE_TYPE and history.enabled(layer):
        position = await metrics.timed_history(layer_call(history.append, layer, group, msg["data"], since))
        if position is None:
            logger.warning(
                "the frames of %s waited %.0f s for the channel layer, and later frames of the stream "
                "went out meanwhile: its pages refresh instead (new epoch)",
                msg.get("stream", group), time.time() - (since or time.time()),
            )
            await layer_call(history.replace_epoch, layer, group)
            msg = message(group, msg.get("stream", group), frame_markup(REFRESH))
            position = await layer_call(history.append, layer, group, msg["data"])
            assert position is not None  # not waiting: always numbered
        msg = {**msg, "epoch": position.epoch, "offset": position.offset}
    with counting_drops() as drops:
        await layer_call(layer.group_send, group, msg)
    return sum(drops)


class ProcessLoop:
    """One event loop per process (made on first use, and anew after a fork).

    It runs in the calling thread, one caller at a time, for as long as a send takes: no handoff
    to another thread per frame (which cost a worker about a fifth of each task). A caller whose
    thread already runs an event loop (async code calling the sync API) lends a short-lived
    helper thread instead. Either way one loop, so one channels_redis pool, serves the process.
    """

    def __init__(self) -> None:
        self._create_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._create_lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._run(coroutine, timeout)
        with ThreadPoolExecutor(1, thread_name_prefix="turbo-async-delivery") as helper:
            return helper.submit(self._run, coroutine, timeout).result()

    def _run(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        loop = self.get()
        with self._run_lock:
            return loop.run_until_complete(asyncio.wait_for(coroutine, timeout))


_loop = ProcessLoop()


def run(coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run a channel-layer coroutine on this process's loop (``manage.py turbo_streams --check``)."""
    return _loop.run(coroutine, timeout)
