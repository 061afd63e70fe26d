"""Layer 1 (beside :mod:`turbo_async.recording`): offsets and a bounded history per stream, kept in
the channel layer's Redis, so that a page can resume where it was.

Each publication sent to a stream's group gets that stream's ``(epoch, offset)``: ``offset`` counts
the stream's publications (1, 2, 3...), ``epoch`` names the counter (a random string, new whenever the
counter is lost: a Redis flush or restart without persistence, or a stream idle for
``EPOCH_TTL``). One Lua script assigns the offset and appends the publication to the stream's history in
one step, so two workers never interleave them. The history is a Redis Stream whose entry ids
are the offsets (``<offset>-0``), trimmed to ``HISTORY_SIZE`` entries; entries older than
``HISTORY_MAX_AGE`` seconds are not replayed.

Keys, on the shard of the channel layer that holds the stream's group (the layer's own
connection pool with ``RedisChannelLayer``; a pool of this module on the same host with
``RedisPubSubChannelLayer``)::

    turbo_async:pos:<group>    hash {epoch, offset, run, at}   expires EPOCH_TTL after the last publication
                               (run: the run_id of the Redis that wrote it; at: the Unix time of
                               the last publication)
    turbo_async:hist:<group>   stream <offset>-0 {d: frames, t: unix time}
                               expires HISTORY_MAX_AGE after the last publication

It reads settings only; :mod:`turbo_async.delivery` (worker side) and
:mod:`turbo_async.consumers` (replay) call it, and ``{% turbo_subscribe %}`` reads the position a
page is rendered at (:func:`at_render`) so that its first subscription replays what came after.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any

from . import conf, placement

logger = logging.getLogger("turbo_async")

EPOCH_TTL = 7 * 24 * 3600
"""Seconds a stream's counter outlives its last publication. A page that saw no frame of its stream for
longer than that refreshes on the next one (the epoch changed): a week, as long as a tab stays open."""

MAX_OFFSET = 2**53 - 1
"""The largest offset a client may send: JavaScript's largest exact integer."""

MAX_EPOCH_LENGTH = 64

_RUN_ID = """
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
"""
"""The ``run_id`` of this Redis server, new at every start (one ``INFO`` per script). The position
hash keeps it in its ``run`` field."""

_EPOCH = """
local stored = redis.call('HMGET', KEYS[1], 'epoch', 'run')
local epoch = stored[1]
local started = false
if (not epoch) or stored[2] ~= run_id then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'run', run_id)
  started = true
end
"""
"""The start of the scripts that number: the stream's epoch, or a new one (ARGV[1]) at offset 0
with an empty history when the stream has none (never sent, expired, or flushed) **or when its
counter was written by another run of Redis** (:data:`_RUN_ID`): a Redis restarted from an older
snapshot, or a replica promoted by a failover, may hold an older offset than the pages have
applied, and reusing it would give one offset to two different frames."""

APPEND_SCRIPT = _RUN_ID + _EPOCH + """
if tonumber(ARGV[7]) > 0 and not started then
  local last = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
  if last >= tonumber(ARGV[7]) then
    return {epoch, -1}
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('HSET', KEYS[1], 'at', ARGV[4])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2], 't', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {epoch, offset}
"""
"""Numbers one entry of the stream and appends it to the stream's history (:func:`append`)."""

_POSITION = """
if started then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {epoch, 0}
end
return {epoch, redis.call('HGET', KEYS[1], 'offset') or 0}
"""

MARK_SCRIPT = _RUN_ID + _EPOCH + _POSITION
"""The stream's position, made (offset 0 of a new epoch) when the stream has none yet: a page
rendered before a stream's first entry must still be able to ask for that entry."""

CURRENT_SCRIPT = _RUN_ID + """
local known = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'run')
if not known[1] then
  return false
end
if known[3] == run_id then
  return {known[1], known[2] or 0}
end
""" + _EPOCH + _POSITION
"""The stream's position, or nil when it has none; a counter of another run of Redis is
replaced by a new epoch first (as :data:`_EPOCH` does), so the pages behind it are told."""

REPLACE_SCRIPT = _RUN_ID + """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'run', run_id)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return ARGV[1]
"""
"""A new epoch for the stream, unconditionally: the frames of some change could not be sent, and
every page of the stream must refresh (:func:`replace_epoch`)."""

RENDER_TIMEOUT = 0.5
"""Seconds a page render may wait for Redis per stream (connect and answer) before it renders
without the position."""

RENDER_RETRY_AFTER = 5.0
"""Seconds renders skip Redis after a failed read, so that a black-holed Redis costs one page
``RENDER_TIMEOUT``, not every page."""


@dataclass(frozen=True)
class Position:
    epoch: str
    offset: int


@dataclass(frozen=True)
class Replay:
    """What a resubscribing client missed: the frames after its offset, in order, or
    ``reset`` with why they cannot be given (the page must refresh)."""

    current: Position | None
    frames: list[tuple[int, str]]
    reset: str | None = None


def after(position: Position, other: Position | None) -> bool:
    """Whether ``position`` is past ``other`` (a position of another epoch counts as past)."""
    return other is None or position.epoch != other.epoch or position.offset > other.offset


def fell_behind(marks: dict[str, Position], group: str, now: Position | None, had: Position | None) -> bool:
    """One audit of ``group`` (a socket's heartbeat, a process's upkeep): whether what it ``had``
    (sent, received) fell behind the stream's position ``now`` for good. Behind at one audit, it
    may only be that frames are on their way: ``now`` is kept in ``marks`` and the next audit
    decides; behind a mark it has not reached since, it fell behind (the mark is dropped; the caller
    catches up). Even, or nothing to compare (no offsets in Redis, nothing had yet), the mark goes."""
    if now is None or had is None or (now.epoch == had.epoch and now.offset <= had.offset):
        marks.pop(group, None)
        return False
    mark = marks.get(group)
    if mark is None or not after(mark, had):
        marks[group] = now
        return False
    del marks[group]
    return True


class BadOffset(ValueError):
    """An epoch or offset a client sent that is malformed or beyond the stream's last offset."""


_internals_warned = False


def _unreadable_layer(layer: Any, exc: Exception, what: str) -> None:
    """Log, at ERROR once per process and then at DEBUG, that ``layer``'s placement could not be
    read (a channels_redis internal moved): ``what`` goes on without stream positions."""
    global _internals_warned
    level = logging.DEBUG if _internals_warned else logging.ERROR
    _internals_warned = True
    logger.log(
        level,
        "could not find which Redis of %s holds a stream (%r): %s without stream positions, so a "
        "page that resubscribes after a gap refreshes instead of replaying what it missed",
        type(layer).__name__, exc, what,
    )


def enabled(layer: Any) -> bool:
    """Whether offsets are kept for this layer: ``OFFSETS`` on and a channels_redis layer (the
    in-memory layer of tests and ``runserver`` has no Redis to keep them in). A channels_redis layer
    whose placement cannot be read (an internal changed) counts as neither, with an ERROR log line:
    frames still go out, without positions."""
    if not conf.get().OFFSETS:
        return False
    try:
        return placement.shard_of(layer, "") is not None
    except Exception as exc:  # a channels_redis internal moved: deliver without offsets, loudly
        _unreadable_layer(layer, exc, "frames go out")
        return False


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = weakref.WeakKeyDictionary()


def client(layer: Any, group: str) -> Any:
    """A redis-py asyncio client of the Redis that holds ``group`` (:func:`placement.shard_of`),
    for the running loop: the core layer's own pool, or a pool of this module beside the pub/sub
    layer's."""
    index = placement.shard_of(layer, group)
    if index is None:
        raise TypeError(f"{type(layer).__name__} is not a channels_redis layer: it keeps no offsets")
    if hasattr(layer, "connection"):  # RedisChannelLayer
        return layer.connection(index)
    from channels_redis.utils import create_pool  # type: ignore[import-untyped]
    from redis import asyncio as aioredis

    host = (placement.hosts(layer) or [{}])[index]
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    key = repr(sorted(host.items()))
    if key not in per_loop:
        per_loop[key] = aioredis.Redis(connection_pool=create_pool(host))
    return per_loop[key]


def position_key(group: str) -> str:
    return f"turbo_async:pos:{group}"


def history_key(group: str) -> str:
    return f"turbo_async:hist:{group}"


async def append(layer: Any, group: str, data: str, quiet_since: float | None = None) -> Position | None:
    """Give ``data`` the next offset of ``group`` and keep it in the history, atomically.

    ``quiet_since`` (a Unix time) is for frames that waited for the layer since then: they are
    numbered only if no other publication of the stream was numbered since (else ``None`` is returned
    and nothing is kept: sent now, they would land after frames of later changes)."""
    settings = conf.get()
    redis = client(layer, group)
    epoch, offset = await redis.eval(
        APPEND_SCRIPT, 2, position_key(group), history_key(group),
        secrets.token_hex(8), data, settings.HISTORY_SIZE, f"{time.time():.3f}",
        max(1, int(settings.HISTORY_MAX_AGE)), EPOCH_TTL, f"{quiet_since or 0:.3f}",
    )
    if int(offset) < 0:
        return None
    return _position(epoch, offset)


def parse(epoch: Any, offset: Any) -> Position | None:
    """The position a client sent with a subscribe: ``None`` when it sent none, else checked.
    Raises :class:`BadOffset` with what is wrong."""
    if epoch is None and offset is None:
        return None
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH or not epoch.isalnum():
        raise BadOffset("epoch must be the string the server sent with a frame (letters and digits)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise BadOffset(f"offset must be an integer from 0 to {MAX_OFFSET}, as the server sent it")
    return Position(epoch, offset)


async def current(layer: Any, group: str) -> Position | None:
    """Where ``group``'s stream stands; ``None`` when it has no position (never sent, expired or
    flushed). A counter that another run of Redis wrote gets a new epoch first (:data:`CURRENT_SCRIPT`)."""
    raw = await client(layer, group).eval(
        CURRENT_SCRIPT, 2, position_key(group), history_key(group), secrets.token_hex(8), EPOCH_TTL,
    )
    if not raw:
        return None
    return _position(raw[0], raw[1])


async def replace_epoch(layer: Any, group: str) -> Position:
    """Give ``group``'s stream a new epoch (offset 0, empty history): every page of the stream
    refreshes at its next frame or heartbeat audit, since its epoch no longer matches."""
    epoch = await client(layer, group).eval(
        REPLACE_SCRIPT, 2, position_key(group), history_key(group), secrets.token_hex(8), EPOCH_TTL,
    )
    return _position(epoch, 0)


def _position(epoch: Any, offset: Any) -> Position:
    return Position(epoch.decode() if isinstance(epoch, bytes) else str(epoch), int(offset))


async def since(layer: Any, group: str, seen: Position) -> Replay:
    """The frames of ``group`` after ``seen``, in order; or a reset when they are gone.

    Raises :class:`BadOffset` when ``seen`` is beyond the stream's last offset in the same epoch
    (no server sent it)."""
    settings = conf.get()
    now = await current(layer, group)
    if now is None:
        return Replay(None, [], reset="the stream's offsets are gone (Redis flushed or restarted)")
    if now.epoch != seen.epoch:
        return Replay(now, [], reset="the stream's epoch changed (its offsets were reset)")
    if seen.offset > now.offset:
        raise BadOffset(f"offset {seen.offset} is beyond the stream's last offset {now.offset}")
    if seen.offset == now.offset:
        return Replay(now, [])
    if seen.offset + settings.HISTORY_SIZE < now.offset:
        missed = now.offset - seen.offset
        return Replay(now, [], reset=f"{missed} publications missed; the history keeps {settings.HISTORY_SIZE}")
    entries = await client(layer, group).xrange(history_key(group), f"{seen.offset + 1}-0", f"{now.offset}-0")
    oldest = time.time() - settings.HISTORY_MAX_AGE
    frames: list[tuple[int, str]] = []
    expected = seen.offset + 1
    for entry_id, fields in entries:
        offset = int(entry_id.split(b"-")[0])
        if offset != expected or float(fields[b"t"]) < oldest:
            break
        frames.append((offset, fields[b"d"].decode()))
        expected += 1
    if expected != now.offset + 1:
        return Replay(now, [], reset="the missed frames are no longer in the history (trimmed or too old)")
    return Replay(now, frames)


# -- The position a page is rendered at (synchronous: templates render outside any event loop) ---

_render_down_until = 0.0
_render_warned = False


def _render_host(layer: Any, group: str) -> dict[str, Any] | None:
    """The channels_redis host dict of the shard holding ``group``, as :func:`client` picks it;
    ``None`` for any other layer, or when the layer's configuration cannot be read (a render never
    fails because of a channels_redis internal). Never touches the layer's per-loop state: there is
    no loop here."""
    try:
        return placement.host_of(layer, group)
    except Exception as exc:  # a channels_redis internal moved: the page still renders
        _unreadable_layer(layer, exc, "pages render")
        return None


def _render_client(host: dict[str, Any]) -> Any:
    """A synchronous client of ``host``: a page render must not wait on Redis."""
    return placement.sync_client(host, RENDER_TIMEOUT)


def at_render(layer: Any, group: str) -> Position | None:
    """The position of ``group`` now, for a page being rendered: its first subscribe sends it,
    and the server replays the publications sent after it (or asks for a refresh when they are gone).

    One Redis call. ``None`` (the page renders without a position, as before) when offsets or
    the history are off, the layer is not channels_redis, or Redis cannot be reached within
    ``RENDER_TIMEOUT``: that is logged at WARNING once per outage, then at DEBUG."""
    global _render_down_until, _render_warned
    settings = conf.get()
    if not settings.OFFSETS or settings.HISTORY_SIZE == 0:
        return None  # nothing to replay from: a position would only ever ask for a refresh
    host = _render_host(layer, group)
    if host is None:
        return None
    if time.monotonic() < _render_down_until:
        return None
    import redis

    try:
        epoch, offset = _render_client(host).eval(
            MARK_SCRIPT, 2, position_key(group), history_key(group), secrets.token_hex(8), EPOCH_TTL,
        )
    except (redis.RedisError, OSError) as exc:
        _render_down_until = time.monotonic() + RENDER_RETRY_AFTER
        level = logging.DEBUG if _render_warned else logging.WARNING
        _render_warned = True
        logger.log(
            level,
            "rendered %s without its stream position (Redis unreachable: %r); a frame sent before "
            "its page subscribes is not replayed. Renders skip Redis for %.0f s.",
            group, exc, RENDER_RETRY_AFTER,
        )
        return None
    _render_warned = False
    return _position(epoch, offset)
