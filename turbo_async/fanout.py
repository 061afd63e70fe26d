"""Layer 2 (beside :mod:`turbo_async.delivery`): how a web process's sockets receive their
groups' frames, behind one interface with two implementations.

- :class:`FanOut` (the default): one channel per process and layer joins every group a socket of
  the process holds; one reader hands each message to the sockets of its group (their
  :meth:`Member.push`), and an upkeep renews the memberships and replays what the process missed.
- :class:`OwnChannel`: each socket joins its groups with its own channel, as Channels does
  (``TurboStreamsConsumer.fan_out = False``); frames then reach the socket through Channels'
  dispatch.

Both answer ``join(group, member)``, ``renew(group, deadline)`` and ``leave(groups, member,
who)``: the socket (:mod:`turbo_async.consumers`) never asks which one it has. Beside them, the
reads of a stream's position and history that a process shares between its sockets
(:func:`stream_position`, :func:`shared_since`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from . import conf, history
from .layers import LAYER_ERRORS, RECEIVE_BACKOFF_MAX, Backoff, forget, layer_call, leave, new_channel, pooled_call
from .protocol import MESSAGE_TYPE, RESET_MESSAGE_TYPE

logger = logging.getLogger("turbo_async")

HOLE_WAIT = 0.5
"""Seconds a process waits for a publication missing below one it received before reading it from
the history (:meth:`FanOut.fill`): two workers' publications may arrive in either order, and one
numbered by a worker stopped before its ``group_send`` never arrives. Well inside the 2 s a page
holds the frames after a missing one before it refreshes (``turbo-async.js``)."""
FILLED_KEPT = 256
"""Offsets per group (at least ``HISTORY_SIZE``) a process remembers having handed out from the
history: a late live copy of one of them is dropped instead of written twice."""


class Member(Protocol):
    """A socket as a group's membership sees it: what it is handed."""

    def push(self, message: dict[str, Any]) -> None: ...


class OwnChannel:
    """A socket that joins its groups with its own channel (Channels' way): frames arrive through
    the socket's channel, not :meth:`Member.push`."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer = layer
        self.channel = channel

    async def join(self, group: str, member: Member) -> None:
        await pooled_call(self.layer.group_add, group, self.channel)

    async def renew(self, group: str, deadline: float) -> None:
        await pooled_call(self.layer.group_add, group, self.channel, deadline=deadline)

    async def leave(self, groups: list[str], member: Member, who: str) -> None:
        await leave(self.layer, groups, self.channel, who)


class FanOut:
    """The frames of a web process's groups, read once and handed to its sockets.

    Channels' way costs, per frame **and per socket**: the layer's copy of the message (decoded
    again for each socket by channels_redis' pub/sub layer), a new task and an ``asyncio.wait``
    in ``await_many_dispatch``, then the handler. Here one channel of the process (per event loop
    and layer) joins each group that some socket of the process subscribed to; one task reads it
    and appends each message to the waiting list of the group's sockets, and writes it to each of
    them in that same loop (``TurboStreamsConsumer.write_queued``, :func:`start_now`): no task per
    socket and frame. Only a socket whose send must wait (its client reads too slowly) gets a
    writer task of its own until its list is empty; a socket that does not keep up only lengthens
    its own list, up to ``SOCKET_BACKLOG``, and the loop goes on to the next socket.

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
        self.members: dict[str, set[Member]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None
        self.opening = asyncio.Lock()
        self.layer_down = False
        # group -> the last numbered frame the reader handed out, and where the stream stood at the
        # last check that found the process behind it.
        self.received: dict[str, history.Position] = {}
        self.behind: dict[str, history.Position] = {}
        # group -> the offsets below the received one that have not arrived (holes), and those
        # filled from the history; group -> the task that fills its holes after HOLE_WAIT.
        self.missing: dict[str, set[int]] = {}
        self.filled: dict[str, deque[int]] = {}
        self.filling: dict[str, asyncio.Task[None]] = {}
        # group -> the first socket's join while it is under way (the others wait for it: joined?).
        self.joining: dict[str, asyncio.Future[bool]] = {}
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

    async def join(self, group: str, consumer: Member) -> None:
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
            joining = self.joining.get(group)
            # ... but not before the first socket's join is through: this socket reads the history
            # next, and a publication sent before the process is in the group would reach it neither way
            # (the soak's reconnection storm saw pages refresh on that gap). If that join failed,
            # this socket joins itself.
            if joining is None or await asyncio.shield(joining):
                return
        # A member before the layer confirms: frames that arrive meanwhile wait in the socket's
        # list (it is holding, see TurboStreamsConsumer.receive) and are checked when written.
        members.add(consumer)
        joining = self.joining[group] = asyncio.get_running_loop().create_future()
        joined = False
        try:
            await pooled_call(self.layer.group_add, group, channel)
            joined = True
        except BaseException:
            self._drop(group, consumer)
            raise
        finally:
            joining.set_result(joined)
            if self.joining.get(group) is joining:
                del self.joining[group]

    async def renew(self, group: str, deadline: float) -> None:
        """A socket's heartbeat renewal: nothing to do while :meth:`upkeep` renews for the process."""
        if self.keeper is not None and not self.keeper.done():
            return
        if self.channel is not None and self.members.get(group):
            await pooled_call(self.layer.group_add, group, self.channel, deadline=deadline)

    async def leave(self, groups: list[str], consumer: Member, who: str) -> None:
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
            self.missing.clear()
            self.filled.clear()
            reader, self.reader = self.reader, None
            if reader is not None:
                # Wait for the read to unwind before forgetting the channel: channels_redis'
                # core layer cleans its buffer of the channel on cancel, and raises (leaving its
                # process-wide receive lock taken, so every later read hangs) if it is gone.
                reader.cancel()
                await asyncio.wait([reader])
            await forget(self.layer, channel)

    def _drop(self, group: str, consumer: Member) -> bool:
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
        self.missing.pop(group, None)
        self.filled.pop(group, None)
        filling = self.filling.pop(group, None)
        if filling is not None:
            filling.cancel()
        return True

    async def read(self, channel: str) -> None:
        """Hand every message of the process's channel to the sockets of its group; waits out an
        unreachable layer (logged once per outage) and never ends before the loop does."""
        backoff = Backoff(0.05, RECEIVE_BACKOFF_MAX)
        while True:
            try:
                message: dict[str, Any] = await self.layer.receive(channel)
            except LAYER_ERRORS as exc:
                if not self.layer_down:
                    self.layer_down = True
                    logger.warning("could not read this process's frames from the channel layer (%r); retrying", exc)
                await backoff.wait()
                continue
            except Exception:  # a safety net: one bad message must not stop every socket's frames
                logger.exception("reading this process's frames from the channel layer failed; retrying")
                await backoff.wait()
                continue
            if self.layer_down:
                self.layer_down = False
                logger.info("the channel layer answers again for this process's frames; joining its "
                            "groups again and checking what they missed")
                self.wake.set()  # rejoin and check now, not at the next interval
            backoff.reset()
            group = message.get("group")
            members = self.members.get(group) if isinstance(group, str) else None
            if members and self.note(message):
                for consumer in members:
                    consumer.push(message)

    def note(self, message: dict[str, Any]) -> bool:
        """Remember the position of a numbered frame for the sockets (see :meth:`audit`), and the
        holes it leaves below it (see :meth:`fill`). Whether to hand it out: not when it is a late
        copy of a publication already filled from the history."""
        group, epoch, offset = message.get("group"), message.get("epoch"), message.get("offset")
        if not (isinstance(group, str) and isinstance(epoch, str) and isinstance(offset, int)):
            return True
        received = self.received.get(group)
        if history.after(history.Position(epoch, offset), received):
            if received is None or received.epoch != epoch:
                self.missing.pop(group, None)
                self.filled.pop(group, None)
            elif 1 < offset - received.offset <= 1 + conf.get().HISTORY_SIZE and history.enabled(self.layer):
                self.missing.setdefault(group, set()).update(range(received.offset + 1, offset))
                if group not in self.filling:
                    self.filling[group] = asyncio.get_running_loop().create_task(self.fill(group))
            self.received[group] = history.Position(epoch, offset)
            return True
        # Batches of two workers can arrive 6 then 5 (each is numbered, then sent): the process
        # has 6, and the audit must not replay it as missed; 5 is handed out unless filled already.
        missing = self.missing.get(group)
        if missing is not None and offset in missing:
            missing.discard(offset)
            return True
        return offset not in self.filled.get(group, ())

    async def fill(self, group: str) -> None:
        """After ``HOLE_WAIT``, hand the group's sockets, in order, the publications still missing
        below the last one received, read once from the history. A worker stopped between
        numbering a publication and sending it leaves such a hole (its task, run again, numbers it
        anew): without this, every page of the stream would hold the frames after it for 2 s and
        refresh. What the history cannot give is left to the pages (they refresh on the gap)."""
        try:
            while True:
                await asyncio.sleep(HOLE_WAIT)
                missing, received = self.missing.get(group), self.received.get(group)
                if not missing or received is None or not self.members.get(group):
                    return
                epoch = received.epoch
                replay = await layer_call(
                    history.since, self.layer, group, history.Position(epoch, min(missing) - 1)
                )
                holes = sorted(missing)
                wanted = [(offset, data) for offset, data in replay.frames if offset in missing]
                missing.difference_update(holes)  # filled now, or left to the pages
                filled = self.filled_of(group)
                members = self.members.get(group, set())
                for offset, data in wanted:
                    filled.append(offset)
                    frame = {"type": MESSAGE_TYPE, "group": group, "data": data, "epoch": epoch, "offset": offset}
                    for consumer in members:
                        consumer.push(frame)
                logger.info(
                    "publication(s) %s of %s did not reach this process within %.1f s: %s", holes, group, HOLE_WAIT,
                    f"{len(wanted)} filled from the history for {len(members)} socket(s)" if wanted
                    else f"the history cannot give them ({replay.reset or 'not found'}); the pages refresh",
                )
        except LAYER_ERRORS as exc:
            logger.warning("could not read the history of %s to fill a hole (%r): its pages refresh on the gap",
                           group, exc)
            self.missing.pop(group, None)
        except Exception:  # a safety net: the pages refresh on the gap
            logger.exception("filling a hole of %s from the history failed", group)
            self.missing.pop(group, None)
        finally:
            if self.filling.get(group) is asyncio.current_task():
                del self.filling[group]

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
            if received is None and now is not None:
                self.received[group] = now  # nothing received yet: what the process has now is the baseline
            if not history.fell_behind(self.behind, group, now, received):
                continue
            assert now is not None and received is not None
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
        filled = self.filled_of(group)
        for offset, data in missed.frames:
            frame = {"type": MESSAGE_TYPE, "group": group, "data": data, "epoch": received.epoch, "offset": offset}
            self.note(frame)
            # A reader far behind (a loaded machine) still has these on their way: dropped then.
            filled.append(offset)
            for consumer in members:
                consumer.push(frame)

    def filled_of(self, group: str) -> deque[int]:
        """The offsets of ``group`` this process handed out from the history (:meth:`fill`,
        :meth:`catch_up`), whose live copies are dropped if they come after all."""
        filled = self.filled.get(group)
        if filled is None:
            filled = self.filled[group] = deque(maxlen=max(FILLED_KEPT, conf.get().HISTORY_SIZE))
        return filled


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, FanOut]] = weakref.WeakKeyDictionary()


def start_now(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` in the caller's step until it first waits; ``None`` when it finished without
    waiting, else the task that runs the rest (a task of its own: the caller never waits for it).

    How the fan-out writes a frame to each of its sockets (``TurboStreamsConsumer.write_queued``):
    a send that the socket's transport takes at once (its buffer has room, the common case)
    finishes in the fan-out's own loop over the sockets, without a task per socket and frame
    (starting one was a fifth of a web process's time in the 10,000-subscriber room, py-spy,
    docs/benchmarks.rst); a send that must wait (a slow reader's buffer is full) goes on in its own
    task, and the fan-out goes on to the next socket. Python 3.12's eager tasks do this too, still
    making a task per call.

    ``coro`` must not depend on which task runs it (``asyncio.current_task()``, ``asyncio.timeout``):
    its first step runs in the caller's. Raises what that first step raises."""
    try:
        waits_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_Started(coro, waits_on))


class _Started:
    """A coroutine :func:`start_now` started, waiting on ``waits_on`` (a future, or ``None`` for a
    bare yield): awaiting this goes on with it, as ``await coro`` would have (PEP 380's ``yield
    from``: what the task sends or throws in goes to ``coro``)."""

    def __init__(self, coro: Coroutine[Any, Any, None], waits_on: Any) -> None:
        self.coro = coro
        self.waits_on = waits_on

    def __await__(self) -> Generator[Any, None, None]:
        coro, waits_on = self.coro, self.waits_on
        while True:
            try:
                sent = yield waits_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError above all: it goes to the coroutine
                try:
                    waits_on = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waits_on = coro.send(sent)
                except StopIteration:
                    return


_positions: dict[str, tuple[float, history.Position | None]] = {}
"""group -> (loop time read, position): the streams' positions, shared by the sockets of a process."""


async def stream_position(layer: Any, group: str, max_age: float) -> history.Position | None:
    """Where ``group``'s stream stands, read from Redis at most once per ``max_age`` seconds per
    process (every socket of a stream audits it on each heartbeat)."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    cached = _positions.get(group)
    if cached is not None and now - cached[0] < max_age:
        return cached[1]
    # One read at a time per group: the sockets of a stream whose cached position expired would
    # otherwise each read it (thousands of heartbeats after a reconnection storm, measured).
    reading = _position_reads.setdefault(loop, {})
    shared = reading.get(group)
    if shared is None:
        shared = reading[group] = asyncio.ensure_future(pooled_call(history.current, layer, group))
        shared.add_done_callback(lambda done: _read_position(reading, group, now, done))
    position: history.Position | None = await asyncio.shield(shared)
    return position


def _read_position(
    reading: dict[str, asyncio.Future[history.Position | None]], group: str, began: float,
    done: asyncio.Future[history.Position | None],
) -> None:
    """Keep the position a shared read found (see :func:`stream_position`)."""
    reading.pop(group, None)
    if done.cancelled() or done.exception() is not None:
        return
    if len(_positions) > 10_000:  # streams come and go: keep the cache from growing for ever
        _positions.clear()
    _positions[group] = (began, done.result())


_position_reads: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, asyncio.Future[history.Position | None]]
] = weakref.WeakKeyDictionary()


_reading: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, history.Position], tuple[float, asyncio.Future[history.Replay]]]
] = weakref.WeakKeyDictionary()


async def shared_since(
    layer: Any, group: str, seen: history.Position, joined: float | None = None
) -> history.Replay:
    """:func:`history.since` through the process's gate (:func:`pooled_call`), one read for all the
    sockets that ask for the same group and position at the same time: when a web process goes
    away, its pages come back together, most of a stream's pages from the same position, and each
    would otherwise make its own reads (beyond the connection pool's limit, measured: pages then
    refreshed with "the history cannot be read now").

    ``joined``: when the socket joined the group (a time of the running loop). A read that started
    before then is not shared with it: a publication sent between that read and the join reached neither
    (the soak's reconnection storm saw pages refresh on that gap); a new read is made, which later
    sockets share."""
    loop = asyncio.get_running_loop()
    reading = _reading.setdefault(loop, {})
    key = (group, seen)
    entry = reading.get(key)
    if entry is None or (joined is not None and entry[0] <= joined):
        shared = asyncio.ensure_future(pooled_call(history.since, layer, group, seen))
        entry = reading[key] = (loop.time(), shared)

        def done(future: asyncio.Future[history.Replay]) -> None:
            current = reading.get(key)
            if current is not None and current[1] is future:
                del reading[key]

        shared.add_done_callback(done)
    return await asyncio.shield(entry[1])
