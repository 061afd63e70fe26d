"""Layer 3: page refreshes (Turbo 8), debounced per stream across every worker process.

Outside a Celery task, ``stream.refresh()`` sends its frame at once (as before). Inside one (a
worker), a burst of changes would otherwise send a burst of refreshes, and every page would reload
once per change; so the worker processes agree, through Redis, on one refresh per burst:

- the first refresh of a stream opens a window: one hash per stream, ``turbo_async:refresh:<group>``,
  gets ``first``/``last``/``request_id`` (set with ``HSETNX`` on ``first``, in one Lua script, so
  exactly one process sees the window open) and that process schedules one delayed Celery task
  (``turbo_async.refresh``, countdown ``REFRESH_DEBOUNCE``);
- later refreshes of the window, in any process, only store their time and request id (the last
  one wins);
- the delayed task (:func:`fire`) sends the refresh, with the stored request id, once the stream
  has been quiet for ``REFRESH_DEBOUNCE`` seconds or the window is ``REFRESH_MAX_WAIT`` old;
  otherwise it schedules itself again for the rest of the wait.

Times come from Redis (``TIME``), not from the workers' clocks. The Redis is the channel layer's
shard that holds the stream's group (:mod:`turbo_async.placement`), as for the stream's position
and history: every worker reaches it whatever the Celery broker is (Redis, Sentinel, RabbitMQ with
quorum queues), and a shard lost takes the window with the stream. With a layer that is not
channels_redis (the in-memory layer of tests and ``runserver``), refreshes are not debounced. A
window whose task was lost (its worker killed before the task was acknowledged and its redelivery
late) is taken over by the next refresh after ``REFRESH_MAX_WAIT`` plus a minute.
"""

from __future__ import annotations

import logging
from typing import Any

from celery._state import get_current_task
from redis.exceptions import RedisError

from . import conf, delivery, metrics, placement, publish, recording
from .frames import REFRESH, frame_markup

logger = logging.getLogger("turbo_async")

REFRESH_TASK = "turbo_async.refresh"
"""The delayed Celery task that sends a debounced refresh (declared in :mod:`turbo_async.tasks`)."""
KEY_PREFIX = "turbo_async:refresh:"
CLIENT_TIMEOUT = 2.0
"""Seconds a debounce command may take before the refresh is sent at once instead."""
STALE_AFTER_MS = 60_000
"""How long past ``REFRESH_MAX_WAIT`` a window may stay open before a refresh takes it over."""

# KEYS[1]: the stream's hash. ARGV: request id, stale-after ms. Returns 1 if this call opened the
# window (its caller schedules the task), else 0.
_REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = tonumber(redis.call('HGET', KEYS[1], 'first'))
local opened = 0
if (not first) or (now - first > tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'first', now)
  opened = 1
end
redis.call('HSET', KEYS[1], 'last', now, 'request_id', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return opened
"""

# KEYS[1]: the stream's hash. ARGV: debounce ms, max wait ms. Returns {0, 0, ''} when nothing is
# waiting, {1, ms, ''} to wait ms more, {2, 0, request_id} to send now (the window is closed).
_FIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'first', 'last', 'request_id')
if not v[1] then
  return {0, 0, ''}
end
local quiet = now - tonumber(v[2])
local waited = now - tonumber(v[1])
local debounce = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
if quiet < debounce and waited < max_wait then
  return {1, math.min(debounce - quiet, max_wait - waited), ''}
end
redis.call('DEL', KEYS[1])
return {2, 0, v[3] or ''}
"""


def refresh(group: str, stream_name: str, request_id: str = "") -> None:
    """Refresh the pages subscribed to ``group``: now, or, in a worker, debounced."""
    if not debouncing(group):
        send(group, stream_name, request_id)
        return
    settings = conf.get()
    try:
        opened = _script(_REQUEST, group)(
            keys=[key(group)], args=[request_id, _ms(settings.REFRESH_MAX_WAIT) + STALE_AFTER_MS]
        )
    except RedisError as exc:
        logger.warning("refresh of %s not debounced, Redis failed: %s", stream_name, exc)
        send(group, stream_name, request_id)
        return
    if not opened:
        return
    try:
        schedule(group, stream_name, settings.REFRESH_DEBOUNCE)
    except Exception as exc:  # the broker is down: better a refresh now than none
        logger.warning("refresh of %s sent now, could not schedule it: %s", stream_name, exc)
        _forget(group)
        send(group, stream_name, request_id)


def fire(group: str, stream_name: str) -> str | None:
    """In the delayed task: the request id of the refresh to send now (the window is then closed),
    or None when it is not due yet (the task is scheduled again) or was already sent."""
    settings = conf.get()
    code, wait_ms, request_id = _script(_FIRE, group)(
        keys=[key(group)], args=[_ms(settings.REFRESH_DEBOUNCE), _ms(settings.REFRESH_MAX_WAIT)]
    )
    if int(code) == 1:
        schedule(group, stream_name, int(wait_ms) / 1000)
        return None
    if int(code) == 0:
        return None
    return request_id.decode() if isinstance(request_id, bytes) else str(request_id)


def send(group: str, stream_name: str, request_id: str = "") -> None:
    """Send the refresh frame (or add it to the frames a broadcast is collecting)."""
    metrics.refresh_sent()
    delivery.send(group, stream_name, frame_markup(REFRESH, request_id=request_id or None))


def schedule(group: str, stream_name: str, countdown: float) -> None:
    """Queue the delayed task that sends the refresh of ``group``, as broadcasts are published
    (:func:`turbo_async.publish.schedule`: the same queue, publish retries and commit time,
    which is the commit time of the task that asked for the refresh, when there is one)."""
    request = getattr(get_current_task(), "request", None)
    committed = request.get(metrics.HEADER) if request is not None else None
    publish.schedule(
        REFRESH_TASK, [group, stream_name], f"{stream_name.replace(':', '.')}.refresh.debounced", countdown,
        committed if isinstance(committed, (int, float)) and not isinstance(committed, bool) else None,
    )


def debouncing(group: str) -> bool:
    """Whether refreshes of ``group`` are debounced here: in a Celery task of a real worker, with a
    channels_redis layer and ``REFRESH_DEBOUNCE`` above 0 (never while a test records, nor in
    eager mode)."""
    if conf.get().REFRESH_DEBOUNCE <= 0 or recording.active():
        return False
    app: Any = conf.celery_app()
    if app.conf.task_always_eager or get_current_task() is None:
        return False
    try:
        if layer_host(group) is not None:
            return True
    except placement.LayerInternalsChanged as exc:
        if "internals" not in _warned:
            _warned.add("internals")
            logger.error("refreshes are not debounced (each is sent at once): %s", exc)
        return False
    _warn_once(type(delivery.channel_layer()).__name__)
    return False


def layer_host(group: str) -> dict[str, Any] | None:
    """The channels_redis host dict of the shard that holds ``group`` (``None``: another layer)."""
    return placement.host_of(delivery.channel_layer(), group)


def key(group: str) -> str:
    return f"{KEY_PREFIX}{group}"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _forget(group: str) -> None:
    try:
        _client(group).delete(key(group))
    except RedisError:
        pass  # the window expires by itself


_warned: set[str] = set()


def _client(group: str) -> Any:
    """A client of the layer's shard that holds ``group`` (one per host and process; with Sentinel
    it follows the master through a failover)."""
    host = layer_host(group)
    if host is None:
        raise RedisError("the channel layer is not channels_redis: nothing to debounce in")
    return placement.sync_client(host, CLIENT_TIMEOUT)


def _script(source: str, group: str) -> Any:
    return _client(group).register_script(source)


def _warn_once(layer: str) -> None:
    if layer not in _warned:
        _warned.add(layer)
        logger.warning(
            "refreshes are not debounced: the channel layer (%s) is not channels_redis, and the "
            "workers agree on refreshes in its Redis",
            layer,
        )
