"""Delivery through a real channels_redis layer: one event loop and one pool per process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from tests.conftest import layer_backend
from tests.services import RedisServer
from turbo_async import delivery

pytestmark = [pytest.mark.integration, pytest.mark.layer]


@pytest.fixture
def redis_layer(redis_server: RedisServer, each_layer: str) -> Iterator[None]:
    """Each channels_redis layer in turn: both keep their connections per event loop."""
    config = {"hosts": [{"address": redis_server.url, "socket_timeout": None}]}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": layer_backend(each_layer), "CONFIG": config}}):
        yield


def test_many_sends_share_one_loop_and_one_pool(redis_layer: None) -> None:
    layer = get_channel_layer()
    loop = delivery._loop.get()
    channel = delivery._loop.run(layer.new_channel())
    delivery._loop.run(layer.group_add("turbo_async.test-pool", channel))
    for n in range(50):
        delivery.send("turbo_async.test-pool", "test:Pool", f"frame {n}")
    received = [delivery._loop.run(layer.receive(channel), timeout=5)["data"] for _ in range(50)]
    assert received == [f"frame {n}" for n in range(50)]
    assert delivery._loop.get() is loop
    # channels_redis keeps its pools per event loop: one loop, so one pool, however many frames.
    assert list(layer._layers) == [loop]


def test_sends_from_several_threads_use_the_same_loop(redis_layer: None) -> None:
    import threading

    loops: list[asyncio.AbstractEventLoop] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            delivery.send("turbo_async.test-threads", "test:Threads", "x")
            loops.append(delivery._loop.get())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(map(id, loops))) == 1


def test_a_send_from_inside_a_running_event_loop_uses_the_same_loop(redis_layer: None) -> None:
    """Async code calling the sync API: the send runs on a helper thread, same loop and pool."""
    layer = get_channel_layer()
    loop = delivery._loop.get()
    channel = delivery._loop.run(layer.new_channel())
    delivery._loop.run(layer.group_add("turbo_async.test-in-loop", channel))

    async def caller() -> None:
        delivery.send("turbo_async.test-in-loop", "test:InLoop", "from async code")

    asyncio.run(caller())
    assert delivery._loop.run(layer.receive(channel), timeout=5)["data"] == "from async code"
    assert delivery._loop.get() is loop
    assert list(layer._layers) == [loop]


@pytest.fixture
def tiny_capacity_layer(redis_server: RedisServer) -> Iterator[None]:
    """The core layer, whatever TURBO_TEST_LAYER says: ``capacity`` is a core-layer thing (the
    pub/sub layer queues without bound in the web process and drops nothing)."""
    config = {"hosts": [{"address": redis_server.url, "socket_timeout": None}], "capacity": 1}
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}}
    ):
        yield


def test_frames_the_layer_drops_for_capacity_are_logged_and_in_the_task_result(
    tiny_capacity_layer: None, caplog: pytest.LogCaptureFixture
) -> None:
    """channels_redis drops a message for a web process whose channel is full and logs it at
    INFO only; here it is a WARNING naming the stream and the count, and the task result has it."""
    import logging

    from turbo_async import worker

    layer = get_channel_layer()
    channel = delivery._loop.run(layer.new_channel())  # a web process that does not read
    delivery._loop.run(layer.group_add("turbo_async.test-drops", channel))
    with caplog.at_level(logging.WARNING):
        with delivery.collect() as first:
            delivery.send("turbo_async.test-drops", "test:Drops", "<fills the channel/>")
        assert worker._deliver(first) == {"frames": 1, "streams": 1}
        results = []
        for n in range(2):
            with delivery.collect() as outgoing:
                delivery.send("turbo_async.test-drops", "test:Drops", f"<dropped {n}/>")
            results.append(worker._deliver(outgoing))
    assert results == [{"frames": 1, "streams": 1, "dropped": 1}] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "turbo_async"]
    assert len(warnings) == 2 and all("test:Drops" in w and "1 web process" in w for w in warnings), warnings
    # channels_redis' own INFO line stays as visible as it was (not shown at WARNING).
    assert not [r for r in caplog.records if r.name == "channels_redis.core"]
    assert delivery._loop.run(layer.receive(channel), timeout=5)["data"] == "<fills the channel/>"
