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
Nothing here touches Redis.
"""

from __future__ import annotations

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
        kwargs: dict[str, Any] = getattr(layer, "_kwargs", None) or {}
        args: tuple[Any, ...] = getattr(layer, "_args", None) or ()
        decoded: list[dict[str, Any]] = decode_hosts(kwargs.get("hosts", args[0] if args else None))
        return decoded
    return None


def group_prefix(layer: Any) -> str:
    """The prefix of ``RedisPubSubChannelLayer``'s group channels (``"asgi"`` by default)."""
    kwargs: dict[str, Any] = getattr(layer, "_kwargs", None) or {}
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
