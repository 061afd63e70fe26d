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


@pytest.mark.parametrize("kind", LAYERS)
def test_a_publication_numbered_but_never_sent_is_filled_from_the_history(redis_server: RedisServer, kind: str) -> None:
    """A worker stopped between numbering a publication (the history's script) and sending it leaves
    a hole: offset 2 is in the history, no web process was sent it, and the pages would hold 3
    for 2 s and refresh. The process hands its sockets 2 from the history after HOLE_WAIT, once
    for all of them; a late live copy of 2 is then dropped. A publication that merely arrives
    late (two workers, 5 after 6) is handed out as it comes, and never read from the history."""
    from turbo_async import fanout as fanout_module, history

    group = f"turbo_async.test-holes-{kind}"

    async def numbered(layer: Any, data: str) -> dict[str, Any]:
        position = await history.append(layer, group, data)
        assert position is not None
        return {**message(group, "s", data), "epoch": position.epoch, "offset": position.offset}

    async def frames_within(member: TurboStreamsConsumer, seconds: float) -> list[tuple[int, str]]:
        got = []
        queue = cast(Socket, member).frames
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                frame = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            got.append((frame["offset"], frame["data"]))
        return got

    async def scenario() -> tuple[list[tuple[int, str]], ...]:
        layer = import_string(layer_backend(kind))(hosts=[{"address": redis_server.url, "socket_timeout": None}])
        await history.client(layer, group).delete(history.position_key(group), history.history_key(group))
        fanout = FanOut(layer)
        first, second = socket(), socket()
        try:
            await fanout.join(group, first)
            await fanout.join(group, second)
            one, two, three = [await numbered(layer, f"<p{n}/>") for n in (1, 2, 3)]
            await layer.group_send(group, one)
            await layer.group_send(group, three)  # two's worker was stopped before its group_send
            started = asyncio.get_running_loop().time()
            holes = await frames_within(first, fanout_module.HOLE_WAIT + 3)
            filled_after = asyncio.get_running_loop().time() - started
            assert filled_after >= fanout_module.HOLE_WAIT
            others = await frames_within(second, 0.1)
            await layer.group_send(group, two)  # a late live copy: the sockets have it
            # Late but not lost: 5 after 6 goes out as it comes, and nothing is read for it.
            four, five, six = [await numbered(layer, f"<p{n}/>") for n in (4, 5, 6)]
            await layer.group_send(group, four)
            await layer.group_send(group, six)
            await asyncio.sleep(0.1)
            await layer.group_send(group, five)
            late = await frames_within(first, fanout_module.HOLE_WAIT + 1.5)
            return holes, others, late
        finally:
            await fanout.leave([group], first, "test")
            await fanout.leave([group], second, "test")
            await layer.flush()

    holes, others, late = asyncio.run(scenario())
    assert holes == [(1, "<p1/>"), (3, "<p3/>"), (2, "<p2/>")]
    assert others == holes
    assert late == [(4, "<p4/>"), (6, "<p6/>"), (5, "<p5/>")]
