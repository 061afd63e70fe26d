"""``turbo_async.history``: offsets and the bounded per-stream history, against a real Redis (the
session's, through a real channels_redis layer)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer

from tests.services import RedisServer
from turbo_async import history
from turbo_async.history import BadOffset, Position

pytestmark = pytest.mark.integration


@pytest.fixture
def run(redis_server: RedisServer) -> Iterator[Any]:
    """``run(coroutine_function, *args)`` on one loop with a layer on the session's Redis."""
    loop = asyncio.new_event_loop()
    layer = RedisChannelLayer(hosts=[{"address": redis_server.url, "socket_timeout": None}])

    def call(function: Any, *args: Any) -> Any:
        return loop.run_until_complete(function(layer, *args))

    yield call
    loop.run_until_complete(layer.close_pools())
    loop.close()


def group() -> str:
    return f"turbo_async.test-history-{uuid.uuid4().hex}"


def test_offsets_count_up_from_one_in_one_epoch(run: Any) -> None:
    name = group()
    positions = [run(history.append, name, f"<f{n}/>") for n in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3]
    assert len({p.epoch for p in positions}) == 1


def test_since_gives_exactly_the_missed_frames_in_order(run: Any) -> None:
    name = group()
    first = run(history.append, name, "<one/>")
    run(history.append, name, "<two/>")
    run(history.append, name, "<three/>")
    replay = run(history.since, name, first)
    assert replay.reset is None and replay.frames == [(2, "<two/>"), (3, "<three/>")]
    assert run(history.since, name, Position(first.epoch, 3)).frames == []


def test_a_trimmed_history_resets(run: Any, settings: Any) -> None:
    settings.TURBO_ASYNC = {"HISTORY_SIZE": 2}
    name = group()
    first = run(history.append, name, "<1/>")
    for n in range(2, 6):
        run(history.append, name, f"<{n}/>")
    replay = run(history.since, name, first)
    assert replay.frames == [] and replay.reset is not None
    assert run(history.since, name, Position(first.epoch, 3)).frames == [(4, "<4/>"), (5, "<5/>")]


def test_too_old_frames_reset(run: Any, settings: Any) -> None:
    settings.TURBO_ASYNC = {"HISTORY_MAX_AGE": 0}
    name = group()
    first = run(history.append, name, "<1/>")
    run(history.append, name, "<2/>")
    # Batches keep their time to the millisecond (rounded): one read within half a millisecond
    # of the append could still find it "not older than now".
    time.sleep(0.01)
    assert run(history.since, name, first).reset is not None


def test_another_epoch_or_a_flushed_redis_resets(run: Any, redis_server: RedisServer) -> None:
    name = group()
    first = run(history.append, name, "<1/>")
    assert run(history.since, name, Position("0ther", 1)).reset is not None
    redis_server.client().delete(history.position_key(name), history.history_key(name))
    assert run(history.since, name, first).reset is not None
    again = run(history.append, name, "<after/>")
    assert again.offset == 1 and again.epoch != first.epoch


@pytest.mark.parametrize("read", ["append", "current", "mark"])
def test_a_counter_written_by_another_run_of_redis_gets_a_new_epoch(
    run: Any, redis_server: RedisServer, read: str
) -> None:
    """A position whose ``run`` is not this server's ``run_id`` (a restart from an older snapshot, a
    promoted replica) is never continued: each script that reads it starts a new epoch at 0, with
    an empty history."""
    name = group()
    run(history.append, name, "<1/>")
    first = run(history.append, name, "<2/>")
    redis_server.client().hset(history.position_key(name), "run", "0" * 40)
    if read == "append":
        after = run(history.append, name, "<3/>")
        assert after.offset == 1
    elif read == "current":
        after = run(history.current, name)
        assert after.offset == 0
    else:
        after = history.at_render(
            RedisChannelLayer(hosts=[{"address": redis_server.url, "socket_timeout": None}]), name
        )
        assert after is not None and after.offset == 0
    assert after.epoch != first.epoch
    assert redis_server.client().hget(history.position_key(name), "run") != b"0" * 40
    assert run(history.since, name, first).reset is not None


def test_an_offset_beyond_the_last_is_refused(run: Any) -> None:
    name = group()
    first = run(history.append, name, "<1/>")
    with pytest.raises(BadOffset, match="beyond the stream's last offset 1"):
        run(history.since, name, Position(first.epoch, 5))


@pytest.mark.parametrize(
    ("epoch", "offset"),
    [("abc", -1), ("abc", 1.5), ("abc", True), ("abc", "3"), ("", 1), (5, 1), ("a" * 65, 1), ("a b", 1),
     ("abc", 2**60), (None, 3), ("abc", None)],
)
def test_garbage_positions_are_refused(epoch: Any, offset: Any) -> None:
    with pytest.raises(BadOffset):
        history.parse(epoch, offset)


def test_no_position_is_none() -> None:
    assert history.parse(None, None) is None
    assert history.parse("ab12", 0) == Position("ab12", 0)


def test_the_pubsub_layer_keeps_offsets_on_its_shard(redis_server: RedisServer) -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    async def scenario() -> tuple[Position, Any]:
        layer = RedisPubSubChannelLayer(hosts=[{"address": redis_server.url}])
        name = group()
        assert history.enabled(layer)
        first = await history.append(layer, name, "<one/>")
        await history.append(layer, name, "<two/>")
        return first, await history.since(layer, name, first)

    first, replay = asyncio.run(scenario())
    assert first.offset == 1 and replay.frames == [(2, "<two/>")]


def test_an_audit_waits_one_round_before_it_finds_a_socket_behind() -> None:
    """``history.fell_behind``, the rule a socket's heartbeat and a process's upkeep share: behind
    once may be frames on their way; behind a mark not reached since is behind; even, or nothing
    to compare, drops the mark."""
    marks: dict[str, Position] = {}
    had, now = Position("e", 4), Position("e", 6)
    assert not history.fell_behind(marks, "g", now, had)  # first look: marked, wait
    assert marks == {"g": now}
    assert not history.fell_behind(marks, "g", now, Position("e", 6))  # caught up: even
    assert marks == {}
    assert not history.fell_behind(marks, "g", now, had)
    assert not history.fell_behind(marks, "g", Position("e", 7), Position("e", 6))  # reached the mark: look again
    assert marks == {"g": Position("e", 7)}
    assert history.fell_behind(marks, "g", Position("e", 8), Position("e", 6))  # the mark not reached
    assert marks == {}
    assert not history.fell_behind(marks, "g", Position("e2", 1), Position("e", 9))  # another epoch: mark first
    assert history.fell_behind(marks, "g", Position("e2", 1), Position("e", 9))
    for now_, had_ in ((None, had), (now, None)):
        marks = {"g": now}
        assert not history.fell_behind(marks, "g", now_, had_)
        assert marks == {}
