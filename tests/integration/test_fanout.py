"""The web process's fan-out (``turbo_async.fanout.FanOut``) on a real channels_redis layer of
each kind, in this process: it reads a group's frames once for all its sockets, and its channel
comes and goes with the groups its sockets hold."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from django.utils.module_loading import import_string

from tests.conftest import LAYERS, layer_backend
from tests.services import RedisServer
from turbo_async.consumers import TurboStreamsConsumer
from turbo_async.delivery import message
from turbo_async.fanout import FanOut

pytestmark = [pytest.mark.integration, pytest.mark.layer]


class Socket:
    """What the fan-out needs of a socket: somewhere to put its frames."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def push(self, frame: dict[str, Any]) -> None:
        self.frames.put_nowait(frame)


def socket() -> TurboStreamsConsumer:
    return cast(TurboStreamsConsumer, Socket())


async def next_frame(member: TurboStreamsConsumer) -> str:
    frame = await asyncio.wait_for(cast(Socket, member).frames.get(), 5)
    return str(frame["data"])


@pytest.mark.parametrize("kind", LAYERS)
def test_the_process_channel_reopens_after_its_last_socket_left(redis_server: RedisServer, kind: str) -> None:
    """The last socket out closes the process's channel (nothing left in Redis); the next socket
    in gets a new one, and frames reach it. (Closing it once left the core layer's receive lock
    taken, and every later read of the process hung: tests/integration/test_page_recovery.py
    under the core layer showed it; this scenario does not reach that timing.)"""
    group = f"turbo_async.test-fanout-{kind}"

    async def scenario() -> list[str]:
        layer = import_string(layer_backend(kind))(hosts=[{"address": redis_server.url, "socket_timeout": None}])
        fanout = FanOut(layer)
        got: list[str] = []
        # In a web process each socket also reads its own channel: with the core layer one of
        # those reads holds the process's receive lock while the fan-out's read waits for it.
        own = asyncio.create_task(layer.receive(await layer.new_channel()))
        await asyncio.sleep(0.1)
        try:
            first, second = socket(), socket()
            await fanout.join(group, first)
            await fanout.join(group, second)
            await layer.group_send(group, message(group, "s", "<one/>"))
            got += [await next_frame(first), await next_frame(second)]
            await fanout.leave([group], first, "test")
            await fanout.leave([group], second, "test")
            assert fanout.channel is None and fanout.members == {}
            third = socket()
            await fanout.join(group, third)
            await layer.group_send(group, message(group, "s", "<two/>"))
            got.append(await next_frame(third))
            await fanout.leave([group], third, "test")
        finally:
            own.cancel()
            await asyncio.wait([own])
            await layer.flush()
        return got

    assert asyncio.run(scenario()) == ["<one/>", "<one/>", "<two/>"]
