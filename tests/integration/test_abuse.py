"""Abuse against the real stack: uvicorn serving tests.asgi (turbo_async.security.OriginValidator
around AuthMiddlewareStack) with Redis as channel layer, driven by real WebSocket clients.

Sizes are small by default so the suite stays fast; the benchmark
(tests/benchmarks/bench_abuse.py) runs the full 2,000 sockets x 100 subscriptions. Environment:
``TURBO_TEST_ABUSE_SOCKETS`` (200), ``TURBO_TEST_ABUSE_SUBSCRIPTIONS`` (20),
``TURBO_TEST_ABUSE_FLOOD`` (2000 messages).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.utils.module_loading import import_string
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import LOG_DIR, current_layer, layer_backend
from tests.services import RedisServer, StreamClient, Uvicorn, free_port, rss_mb, subscribed
from tests.testapp.streams import RoomStream
from turbo_async import conf
from turbo_async.layers import forget, new_channel

pytestmark = [pytest.mark.integration, pytest.mark.layer]

SOCKETS = int(os.environ.get("TURBO_TEST_ABUSE_SOCKETS", "200"))
SUBSCRIPTIONS = int(os.environ.get("TURBO_TEST_ABUSE_SUBSCRIPTIONS", "20"))
FLOOD = int(os.environ.get("TURBO_TEST_ABUSE_FLOOD", "2000"))
WS_MAX_SIZE = 20000  # a little over MAX_MESSAGE_BYTES (16384), as the deployment docs advise


def junk(size: int = 16000) -> str:
    """A valid JSON subscribe with a forged 16 KB signature: it passes the size check and reaches
    the signature check, the most expensive refusal."""
    return json.dumps({"type": "subscribe", "signed_channel_name": "x" * size})


def group_members(redis: RedisServer) -> int:
    """Members left in channels_redis core's groups (one sorted set per group, ``asgi:group:<name>``)."""
    client = redis.client()
    return sum(client.zcard(key) for key in client.scan_iter("asgi:group:*"))


def subscriptions(redis: RedisServer) -> int:
    """Redis pub/sub channels with a subscriber: the pub/sub layer's groups, and one channel per
    open socket."""
    return len(redis.client().pubsub_channels())


def a_layer(redis: RedisServer) -> Any:
    """A channels_redis layer of this run's kind, in this process, on ``redis``."""
    return import_string(layer_backend(current_layer()))(hosts=[{"address": redis.url}])


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, django_db_setup: None) -> Iterator[Uvicorn]:
    """A uvicorn of its own (its RSS and log are this module's), with --ws-max-size as deployed."""
    web = Uvicorn(LOG_DIR, name="web-abuse")
    web.args += ["--ws-max-size", str(WS_MAX_SIZE)]
    web.start()
    yield web
    web.stop()


def log_lines(web: Uvicorn) -> int:
    return len(web.log().splitlines())


# -- the flood -------------------------------------------------------------------------------


def test_a_flooding_socket_is_closed_with_1008_and_writes_a_bounded_log(server: Uvicorn) -> None:
    before = log_lines(server)
    message = junk()
    attacker = StreamClient(server.ws_url, server.origin)
    sent = 0
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(FLOOD):
            attacker.send_raw(message)
            sent += 1
        while True:  # everything sent: read the error frames until the server closes
            attacker.ws.recv(timeout=10)
    # The close frame says 1008, unless the client was still sending when the server closed: the
    # kernel then resets the connection and the frame is lost (uncompressed 16 KB messages, as
    # deployed with --ws-per-message-deflate false). The server's log says which code it sent.
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1008, closed.value
    assert "with code 1008" in "\n".join(server.log().splitlines()[before:])
    # Another client is served while and after the flood.
    with subscribed(server, RoomStream(1).signed_stream_name):
        pass
    time.sleep(0.5)
    written = log_lines(server) - before
    settings = conf.get()
    # The first refusals, the 1008 line, the summary: not one line per message.
    assert written <= settings.LOGGED_REFUSALS_PER_SOCKET + 2, server.log().splitlines()[before:]
    assert sent > settings.MESSAGE_BURST or FLOOD <= settings.MESSAGE_BURST


def test_a_flood_from_one_socket_does_not_refuse_another_socket(server: Uvicorn) -> None:
    attacker = StreamClient(server.ws_url, server.origin)
    with subscribed(server) as victim:
        for n in range(conf.get().MESSAGE_BURST + 50):
            try:
                attacker.send_raw(junk())
            except ConnectionClosed:
                break
            if n % 50 == 0:
                name = RoomStream(n).signed_stream_name
                victim.subscribe(name)
                assert victim.receive() == {"type": "subscribed", "signed_channel_name": name}
    attacker.close()


def test_a_client_that_reconnects_after_every_close_writes_a_bounded_log(
    redis_server: RedisServer, django_db_setup: None
) -> None:
    """Each new connection gets a fresh per-socket budget: the process's
    LOGGED_REFUSALS_PER_MINUTE (30 here) bounds what 20 abusive connections write together, and
    the 1008 lines of the later ones are among what is only counted. A uvicorn of its own: the
    budget is per process and per minute."""
    budgets = {"MESSAGE_BURST": 20, "MAX_MESSAGES_PER_SECOND": 5, "LOGGED_REFUSALS_PER_MINUTE": 30}
    web = Uvicorn(LOG_DIR, name="web-abuse-budget", TURBO_TEST_TURBO_ASYNC=json.dumps(budgets))
    web.start()
    try:
        before = log_lines(web)
        for _ in range(20):
            attacker = StreamClient(web.ws_url, web.origin)
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    attacker.send_raw(junk(1000))
                while True:
                    # well before uvicorn's close timeout (10 s): the close is not held up by
                    # the messages the client sent after its budget ran out
                    attacker.ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
        time.sleep(0.5)
        lines = web.log().splitlines()[before:]
        closes = sum("with code 1008" in line for line in lines)
        # 20 connections would have written 140 lines (5 refusals, a summary, the 1008 line each)
        assert len(lines) == 30, lines
        assert 1 <= closes < 20, lines
        # and the server still answers
        with subscribed(web, RoomStream(1).signed_stream_name):
            pass
    finally:
        web.stop()


# -- the mass close --------------------------------------------------------------------------


async def _mass(url: str, origin: str, sockets: int, count: int, layer: Any) -> list[dict[str, Any]]:
    """``sockets`` sockets subscribe to ``count`` rooms each and all close, while frames are sent
    to those rooms 20 times a second (so that sockets close with frames on their way to them)."""
    from websockets.asyncio.client import connect as aconnect

    rooms = [RoomStream(n) for n in range(count)]
    replies: list[dict[str, Any]] = []
    opened = []
    for batch in range(0, sockets, 100):  # connect in batches: the listen backlog is finite
        opened += await asyncio.gather(
            *(aconnect(url, origin=origin, open_timeout=60) for _ in range(batch, min(sockets, batch + 100)))  # type: ignore[arg-type]
        )

    async def subscribe_all(ws: Any) -> None:
        for room in rooms:
            await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": room.signed_stream_name}))
        answered = 0
        while answered < len(rooms):
            reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if reply.get("type") in ("subscribed", "error"):  # not the heartbeat's pings, nor frames
                replies.append(reply)
                answered += 1

    async def frames(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for room in rooms:
                await layer.group_send(
                    room.broadcastable_stream_name,
                    {"type": "turbo.stream", "signed_channel_name": room.signed_stream_name, "data": "<p></p>"},
                )
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    sender = asyncio.create_task(frames(stop))
    await asyncio.gather(*(subscribe_all(ws) for ws in opened))
    await asyncio.gather(*(ws.close() for ws in opened))
    stop.set()
    await sender
    return replies


def test_mass_subscribe_and_close_leaves_nothing_behind(server: Uvicorn, redis_server: RedisServer) -> None:
    assert server.process is not None
    start_log = len(server.log())
    # Other modules' processes share this Redis and may hold groups and subscriptions of their own.
    before = (group_members(redis_server), subscriptions(redis_server))
    replies = asyncio.run(_mass(server.ws_url, server.origin, SOCKETS, SUBSCRIPTIONS, a_layer(redis_server)))
    assert len(replies) == SOCKETS * SUBSCRIPTIONS
    errors = [r for r in replies if r.get("type") != "subscribed"]
    assert errors == []
    # Nothing of the closed sockets stays in Redis: no group member (core), no subscription of
    # theirs (pub/sub: channels_redis leaves about half of them subscribed when a socket closes
    # with frames on their way; turbo_async.layers.forget drops them).
    def left() -> tuple[int, int]:
        return group_members(redis_server) - before[0], subscriptions(redis_server) - before[1]

    deadline = time.monotonic() + 10
    while max(left()) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert max(left()) <= 0, f"left behind (group members, subscriptions): {left()}"
    log = server.log()[start_log:]
    assert "Exception in ASGI application" not in log
    assert "internal error" not in log
    # Memory is a benchmark's figure, not an assert (tests/benchmarks/bench_abuse.py reports
    # uvicorn's RSS before, at the peak and after the close; docs/security.rst).


def test_the_core_layers_buffer_of_a_closed_socket_is_dropped(redis_server: RedisServer) -> None:
    """channels_redis' core layer sets aside, in the web process, the messages that reach a
    channel nobody reads any more (a socket that closed while frames were on their way), and keeps
    them for ever: turbo_async.layers.forget drops them. In this process, with a real Redis."""
    from channels_redis.core import RedisChannelLayer

    async def scenario() -> tuple[bool, bool]:
        layer = RedisChannelLayer(hosts=[{"address": redis_server.url}])
        closed, live = await layer.new_channel(), await layer.new_channel()
        await layer.send(closed, {"type": "turbo.stream", "data": "too late"})
        await layer.send(live, {"type": "turbo.stream", "data": "read"})
        # The live socket's read takes the process's messages in order and sets the first aside.
        assert (await layer.receive(live))["data"] == "read"
        set_aside = closed in layer.receive_buffer
        await forget(layer, closed)
        kept = closed in layer.receive_buffer
        await layer.flush()
        return set_aside, kept

    assert asyncio.run(scenario()) == (True, False)


def test_a_pubsub_channel_that_could_not_subscribe_leaves_no_queue_behind(redis_server: RedisServer) -> None:
    """channels_redis' pub/sub layer keeps the queue of a channel whose ``SUBSCRIBE`` failed, so
    each retry of a handshake while Redis is down left one in the web process for ever
    (docs/architecture.rst, "Pitfalls"): turbo_async.layers.new_channel drops it. In this
    process, with nothing listening on one port and a real Redis on the other."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    from turbo_async.layers import LAYER_ERRORS

    async def scenario() -> tuple[int, int, bool]:
        down = RedisPubSubChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{free_port()}"}])
        with pytest.raises(LAYER_ERRORS):
            await down.new_channel()  # channels_redis' own call: the pitfall
        left_by_channels_redis = len(down._get_layer().channels)
        for _ in range(3):
            with pytest.raises(LAYER_ERRORS):
                await new_channel(down)
        left_by_ours = len(down._get_layer().channels) - left_by_channels_redis
        up = RedisPubSubChannelLayer(hosts=[{"address": redis_server.url}])
        name = await new_channel(up)
        await up.send(name, {"type": "turbo.stream", "data": "read"})
        received = (await asyncio.wait_for(up.receive(name), 10))["data"] == "read"
        await up.flush()
        await down.flush()
        return left_by_channels_redis, left_by_ours, received

    assert asyncio.run(scenario()) == (1, 0, True)


# -- origins ---------------------------------------------------------------------------------


def test_the_pages_own_origin_is_accepted(server: Uvicorn) -> None:
    with connect(server.ws_url, origin=server.origin, open_timeout=10) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"type": "subscribe", "signed_channel_name": RoomStream(1).signed_stream_name}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:1", "https://127.0.0.1:{port}", "https://127.0.0.1", "http://localhost:{port}", "null", None],
)
def test_other_origins_are_refused_at_the_handshake(server: Uvicorn, origin: str | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(
            server.ws_url,
            origin=origin.format(port=server.port) if origin else None,  # type: ignore[arg-type]
            open_timeout=10,
        )
    assert refused.value.response.status_code == 403
    assert "refused a WebSocket handshake" in server.log()


# -- transport limits ------------------------------------------------------------------------


def test_a_frame_over_ws_max_size_is_refused_by_the_server_before_it_is_read(server: Uvicorn) -> None:
    assert server.process is not None
    rss_before = rss_mb(server.process.pid)

    def oversized(_: int) -> ConnectionClosed:
        client = StreamClient(server.ws_url, server.origin)
        with pytest.raises(ConnectionClosed) as closed:
            client.send_raw("x" * (8 * 1024 * 1024))
            client.ws.recv(timeout=20)
        return closed.value

    # Ten at once: each waits out the server's close handshake (10 s) while its send is blocked.
    with ThreadPoolExecutor(10) as pool:
        for closed in pool.map(oversized, range(10)):
            # 1009 (message too big); or no close frame at all when the server closed while the
            # client was still sending the 8 MiB (the kernel resets the connection): either way
            # the server stopped reading, which the RSS below shows.
            assert closed.rcvd is None or closed.rcvd.code == 1009, closed
    assert rss_mb(server.process.pid) - rss_before < 30


def test_a_frame_between_max_message_bytes_and_ws_max_size_gets_an_error_frame(server: Uvicorn) -> None:
    with subscribed(server) as client:
        client.send_raw(junk(17000))
        assert client.receive()["error"] == "message larger than 16384 bytes"
