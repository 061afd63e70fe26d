"""turbo_async.placement against channels_redis' own placement, with real Redis servers: for 1 to 5
hosts and both layers, the Redis where channels_redis put a group (its sorted set for the core
layer, its pub/sub channel for the pub/sub layer) is the one :func:`placement.shard_of` names, and
so the one that holds the stream's position and history."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from tests.services import RedisServer, free_port
from turbo_async import history, placement

pytestmark = pytest.mark.integration

GROUPS = [f"testapp.Room-{pk}" for pk in range(1, 13)] + ["broadcast-room_list", "chat.RoomListStream"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    root: Path = tmp_path_factory.mktemp("placement")
    started = [RedisServer(free_port(), root / str(n)) for n in range(5)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop()


def where(servers: list[RedisServer], found: Any) -> int:
    holders = [n for n, server in enumerate(servers) if found(server.client())]
    assert len(holders) == 1, holders
    return holders[0]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_core_layer_places_each_group_where_shard_of_says(servers: list[RedisServer], count: int) -> None:
    used = servers[:count]
    for server in used:
        server.flushall()
    layer = RedisChannelLayer(hosts=[server.url for server in used])

    async def join() -> None:
        channel = await layer.new_channel()
        for group in GROUPS:
            await layer.group_add(group, channel)
        await layer.close_pools()  # (flush() would delete the groups this test looks for)

    asyncio.run(join())
    for group in GROUPS:
        assert where(used, lambda client, g=group: client.exists(f"asgi:group:{g}")) == placement.shard_of(layer, group)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_pubsub_layer_places_each_group_where_shard_of_says(servers: list[RedisServer], count: int) -> None:
    used = servers[:count]
    layer = RedisPubSubChannelLayer(hosts=[server.url for server in used])

    async def join() -> list[int]:
        channel = await layer.new_channel()
        shards = []
        for group in GROUPS:
            await layer.group_add(group, channel)
            shards.append(where(used, lambda client, g=group: f"asgi__group__{g}".encode() in client.pubsub_channels()))
        await layer.flush()
        return shards

    shards = asyncio.run(join())
    assert shards == [placement.shard_of(layer, group) for group in GROUPS]


def test_two_pubsub_hosts_split_the_first_rooms_as_channels_redis_does(servers: list[RedisServer]) -> None:
    """The case of issue 21: ``crc32(group) % n`` (the old placement) differs from channels_redis'
    for some of the first twelve rooms, so their positions lived on the other shard."""
    layer = RedisPubSubChannelLayer(hosts=[server.url for server in servers[:2]])
    import zlib

    differing = [g for g in GROUPS[:12] if zlib.crc32(g.encode()) % 2 != placement.shard_of(layer, g)]
    assert differing  # the old placement was wrong for these
    assert placement.host_of(layer, differing[0]) == {"address": servers[placement.shard_of(layer, differing[0]) or 0].url}


@pytest.mark.parametrize("kind", ["core", "pubsub"])
def test_the_position_and_history_live_on_the_shard_of_the_group(servers: list[RedisServer], kind: str) -> None:
    used = servers[:3]
    for server in used:
        server.flushall()
    cls = RedisChannelLayer if kind == "core" else RedisPubSubChannelLayer
    layer = cls(hosts=[server.url for server in used])

    async def send() -> None:
        for group in GROUPS:
            await history.append(layer, group, f"<p>{group}</p>")

    asyncio.run(send())
    for group in GROUPS:
        shard = placement.shard_of(layer, group)
        assert where(used, lambda client, g=group: client.exists(history.position_key(g))) == shard
        assert where(used, lambda client, g=group: client.exists(history.history_key(g))) == shard
        assert history._render_host(layer, group) == placement.host_of(layer, group)


def test_shard_of_is_none_for_a_layer_that_is_not_channels_redis() -> None:
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    assert placement.shard_of(layer, "g") is None
    assert placement.host_of(layer, "g") is None
    assert not history.enabled(layer)


@pytest.mark.parametrize("attribute", ["_kwargs", "_args"])
def test_a_pubsub_layer_without_its_arguments_is_an_error_not_the_default_host(attribute: str) -> None:
    """Without ``_kwargs``/``_args`` (a channels_redis that stores them no more), guessing would
    give channels_redis' default host, a Redis the layer may not use: :func:`placement.hosts` says
    what changed instead, and the callers fall back (tests/test_templatetags_position.py)."""
    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])
    assert placement.hosts(layer) == [{"address": "redis://127.0.0.1:1/0"}]
    delattr(layer, attribute)
    with pytest.raises(placement.LayerInternalsChanged, match="has no _kwargs/_args"):
        placement.shard_of(layer, "g")
