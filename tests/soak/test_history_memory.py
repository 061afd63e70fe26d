"""What a stream's history costs in Redis at its limits (issue 23, docs/soak.rst "Redis memory").

Streams are filled past ``HISTORY_SIZE`` through :func:`turbo_async.history.append` (the worker's
code: the position hash and the Redis Stream of ``{d, t}`` entries) on a redis-server of this
test's own, and ``used_memory`` before and after is compared with :func:`history_bytes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import RedisServer, free_port
from turbo_async import history

pytestmark = pytest.mark.integration

STREAMS = 10
PER_STREAM_BYTES = 4096
PER_ENTRY_BYTES = 250
TOLERANCE = 0.10
"""How far below the formula ``used_memory`` may be for frames of 1 KB and more."""


def history_bytes(history_size: int, frame_bytes: int) -> int:
    """The Redis memory one stream's history takes once full: an upper bound for frames up to 8 KB
    (redis-server 7, default ``stream-node-max-bytes``)."""
    return PER_STREAM_BYTES + history_size * (frame_bytes + PER_ENTRY_BYTES)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def used_per_stream(redis: RedisServer, history_size: int, frame_bytes: int) -> float:
    from channels_redis.pubsub import RedisPubSubChannelLayer  # type: ignore[import-untyped]

    client = redis.client()
    client.flushall()
    layer = RedisPubSubChannelLayer(hosts=[{"address": redis.url}])
    data = "x" * frame_bytes

    async def fill() -> int:
        await history.append(layer, "warm-up", "x")  # the client's connection, before the baseline
        before = int(client.info("memory")["used_memory"])
        for stream in range(STREAMS):
            for _ in range(history_size + 5):  # past the limit: trimmed to it
                await history.append(layer, f"stream-{stream}", data)
        return before

    before = asyncio.run(fill())
    assert {int(client.xlen(history.history_key(f"stream-{n}"))) for n in range(STREAMS)} == {history_size}
    return (int(client.info("memory")["used_memory"]) - before) / STREAMS


@pytest.mark.parametrize("history_size", [100, 500])
@pytest.mark.parametrize("frame_bytes", [1000, 2000, 4000, 8000])
def test_a_full_history_costs_what_the_formula_says(
    redis: RedisServer, settings: Any, history_size: int, frame_bytes: int
) -> None:
    """Frames of 1 to 8 KB: ``used_memory`` per stream is at most the formula and within
    ``TOLERANCE`` below it."""
    settings.TURBO_ASYNC = {"HISTORY_SIZE": history_size}
    used = used_per_stream(redis, history_size, frame_bytes)
    bound = history_bytes(history_size, frame_bytes)
    print(f"\nHISTORY_SIZE {history_size}, frames of {frame_bytes} B: {used:,.0f} B per stream, "
          f"formula {bound:,} B ({100 * used / bound:.1f}%)")
    assert (1 - TOLERANCE) * bound <= used <= bound


@pytest.mark.parametrize("frame_bytes", [100, 300])
def test_small_frames_cost_less_than_the_formula(redis: RedisServer, settings: Any, frame_bytes: int) -> None:
    """Frames of a few hundred bytes pack several to a Redis Stream node: the formula is a bound."""
    settings.TURBO_ASYNC = {"HISTORY_SIZE": 100}
    used = used_per_stream(redis, 100, frame_bytes)
    bound = history_bytes(100, frame_bytes)
    print(f"\nHISTORY_SIZE 100, frames of {frame_bytes} B: {used:,.0f} B per stream, formula {bound:,} B "
          f"({100 * used / bound:.1f}%)")
    assert used <= bound
