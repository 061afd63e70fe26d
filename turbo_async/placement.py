"""Layer 0 (a leaf): which Redis of a sharded channel layer holds a stream's group.

Everything turbo_async keeps per stream in the channel layer's Redis (its position and history,
:mod:`turbo_async.history`) must live on the shard that holds the stream's group, so that a shard
lost or flushed takes a stream's group and its offsets together, and a page is told. channels_redis
places a group with its own function, which differs between its two layers:

- ``RedisChannelLayer`` (core): ``layer.consistent_hash(group)``, an index into ``layer.hosts``;
- ``RedisPubSubChannelLayer``: ``_consistent_hash(prefix + "__group__" + group, len(hosts))``, the
  shard of the group's pub/sub channel.

:func:`shard_of` is that one function, for both; ``tests/test_placement.py`` compares it with
channels_redis' own placement for 1 to 5 hosts and both layers, and pins the internals it reads.
:func:`sync_client` makes a synchronous redis-py client of such a host (plain, URL or Sentinel)
for the code that runs outside an event loop (page renders, debounced refreshes in a worker).
Nothing here talks to Redis until a client is used.
"""

from __future__ import annotations

import os
import threading
from typing import Any


def _layers() -> tuple[Any, Any]:
    try:
        from channels_redis.core import RedisChannelLayer  # type: ignore[import-untyped]
        from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - channels_redis is a dependency
        return None, None
    return RedisChannelLayer, RedisPubSubChannelLayer


def hosts(layer: Any) -> list[dict[str, Any]] | None:
    """The host dicts of a channels_redis layer, in the order channels_redis numbers its shards;
    ``None`` for any other layer (the in-memory layer of tests and ``runserver``)."""
    core, pubsub = _layers()
    if core is not None and isinstance(layer, core):
        found: list[dict[str, Any]] = list(layer.hosts)
        return found
    if pubsub is not None and isinstance(layer, pubsub):
        from channels_redis.utils import decode_hosts  # type: ignore[import-untyped]

        # The proxy builds each loop's layer (and its shards) from these arguments, in this order.
        kwargs, args = _pubsub_arguments(layer)
        decoded: list[dict[str, Any]] = decode_hosts(kwargs.get("hosts", args[0] if args else None))
        return decoded
    return None


class LayerInternalsChanged(RuntimeError):
    """channels_redis no longer keeps what :func:`hosts` reads (its pub/sub layer's constructor
    arguments): guessing would put positions on the wrong Redis, so the caller is told instead."""


def _pubsub_arguments(layer: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The ``(kwargs, args)`` a ``RedisPubSubChannelLayer`` was built with (its private ``_kwargs``
    and ``_args``, pinned by tests/test_layers.py). A layer without them raises
    :class:`LayerInternalsChanged`: defaulting to channels_redis' default host would read and write
    positions on a Redis the layer may not use."""
    # Read from the instance itself: the layer's __getattr__ forwards unknown names to its
    # per-loop layer, which needs a running loop and has no such attributes either.
    own: dict[str, Any] = getattr(layer, "__dict__", {})
    kwargs, args = own.get("_kwargs"), own.get("_args")
    if not isinstance(kwargs, dict) or not isinstance(args, tuple):
        raise LayerInternalsChanged(
            f"{type(layer).__name__} has no _kwargs/_args (dict and tuple) to read its hosts from: this "
            "channels_redis is newer than turbo_async knows. Pin channels-redis to a version turbo_async "
            "supports, or set TURBO_ASYNC['OFFSETS'] = False."
        )
    return kwargs, args


def group_prefix(layer: Any) -> str:
    """The prefix of ``RedisPubSubChannelLayer``'s group channels (``"asgi"`` by default)."""
    kwargs, _ = _pubsub_arguments(layer)
    prefix = kwargs.get("prefix", "asgi")
    return prefix if isinstance(prefix, str) else "asgi"


def shard_of(layer: Any, group: str) -> int | None:
    """The index, in :func:`hosts`, of the Redis holding ``group``; ``None`` for a layer that is
    not channels_redis."""
    core, pubsub = _layers()
    if core is not None and isinstance(layer, core):
        index: int = layer.consistent_hash(group)
        return index
    if pubsub is not None and isinstance(layer, pubsub):
        from channels_redis.utils import _consistent_hash

        found = hosts(layer) or [{}]
        shard: int = _consistent_hash(f"{group_prefix(layer)}__group__{group}", len(found))
        return shard
    return None


def host_of(layer: Any, group: str) -> dict[str, Any] | None:
    """The channels_redis host dict of the Redis holding ``group`` (``None``: not channels_redis)."""
    index = shard_of(layer, group)
    found = hosts(layer)
    if index is None or not found:
        return None
    return found[index]


_sync_clients: dict[tuple[int, str, float], Any] = {}
_sync_lock = threading.Lock()


def sync_client(host: dict[str, Any], timeout: float) -> Any:
    """A synchronous redis-py client of a channels_redis ``host`` dict, whose commands and connects
    time out after ``timeout`` seconds (the layer's own timeouts suit a socket that waits for
    frames, often ``None``). One per host, timeout and process (made anew after a fork)."""
    key = (os.getpid(), repr(sorted(host.items())), timeout)
    with _sync_lock:
        found = _sync_clients.get(key)
        if found is not None:
            return found
        import redis

        options = dict(host)
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        options.pop("retry_on_timeout", None)
        if "address" in options:
            pool = redis.ConnectionPool.from_url(options.pop("address"), **options)
        elif "master_name" in options:
            from redis.sentinel import Sentinel, SentinelConnectionPool

            sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                [tuple(pair) for pair in options.pop("sentinels")], sentinel_kwargs=options.pop("sentinel_kwargs", None)
            )
            pool = SentinelConnectionPool(options.pop("master_name"), sentinel, **options)  # type: ignore[no-untyped-call]
        else:
            pool = redis.ConnectionPool(**options)
        found = _sync_clients[key] = redis.Redis(connection_pool=pool)
        return found
