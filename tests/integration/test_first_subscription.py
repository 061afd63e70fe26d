"""A page's first subscription (issue 12): the frames sent between the page's render and its
subscribe are replayed, with real processes (Redis, a Celery worker, uvicorn serving the demo's
room page).

The page is fetched over HTTP from uvicorn; its ``<turbo-channels-stream-source>`` carries the
stream's position at render (``data-epoch``, ``data-offset``). A message saved after the fetch
is numbered by the worker; a client that subscribes with the rendered position gets exactly that
frame replayed, and one that subscribes without it (turbo-django's protocol) gets nothing.
"""

from __future__ import annotations

import html
import json
import re
import urllib.request
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from tests.factories import MessageFactory, RoomFactory
from tests.services import RedisServer, StreamClient, Uvicorn, stream_offset, wait_offset
from turbo_async import history, names, suppress

pytestmark = [pytest.mark.integration, pytest.mark.layer]

ELEMENT = re.compile(
    r'<turbo-channels-stream-source signed-channel-name="([^"]+)" data-epoch="([0-9a-f]+)" data-offset="(\d+)">'
)


def fetch_room(web: Uvicorn, room: Any) -> tuple[str, history.Position]:
    """The room page's signed name and rendered position, as a browser gets them."""
    with urllib.request.urlopen(f"{web.origin}/rooms/{room.pk}/", timeout=10) as response:
        page = response.read().decode()
    for signed, epoch, offset in ELEMENT.findall(page):
        signed = html.unescape(signed)
        if names.unsign(signed)[0] == "chat:RoomStream":
            return signed, history.Position(epoch, int(offset))
    raise AssertionError(f"no room stream element with a position in the page:\n{page}")


def frames_until_quiet(client: StreamClient, quiet: float = 1.0) -> list[dict[str, Any]]:
    """Every frame the client gets until nothing came for ``quiet`` seconds."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            message = client.receive(timeout=quiet)
        except TimeoutError:
            return frames
        assert "data" in message, message
        frames.append(message)


def subscribe(client: StreamClient, signed: str, position: history.Position | None) -> None:
    extra = {} if position is None else {"epoch": position.epoch, "offset": position.offset}
    client.send_raw(json.dumps({"type": "subscribe", "signed_channel_name": signed, **extra}))
    assert client.receive() == {"type": "subscribed", "signed_channel_name": signed}


def test_a_save_between_render_and_first_subscribe_is_replayed(live: Uvicorn, redis_server: RedisServer) -> None:
    with suppress():
        room = RoomFactory()
    signed, rendered = fetch_room(live, room)
    assert rendered.offset == stream_offset(redis_server, room)

    MessageFactory(room=room, text="said after the render")
    wait_offset(redis_server, room, rendered.offset + 1)

    late = StreamClient(live.ws_url, live.origin)
    plain = StreamClient(live.ws_url, live.origin)
    try:
        subscribe(late, signed, rendered)
        subscribe(plain, signed, None)
        replayed = frames_until_quiet(late)
        assert [(f["epoch"], f["offset"]) for f in replayed] == [(rendered.epoch, rendered.offset + 1)]
        assert "said after the render" in replayed[0]["data"]
        # Without the rendered position the frame is gone: what the page would have missed.
        assert frames_until_quiet(plain) == []

        # Then live frames, numbered on from the replayed one, on both sockets.
        MessageFactory(room=room, text="said live")
        for client in (late, plain):
            (live_frame,) = frames_until_quiet(client)
            assert live_frame["offset"] == rendered.offset + 2 and "said live" in live_frame["data"]
    finally:
        late.close()
        plain.close()


def test_a_room_rendered_before_its_first_message_replays_that_message(
    live: Uvicorn, redis_server: RedisServer
) -> None:
    with suppress():
        room = RoomFactory()
    signed, rendered = fetch_room(live, room)
    assert rendered.offset == 0  # the render gave the new stream its epoch

    # One task, so one offset, per save: saves back to back would otherwise share a batch
    # (BATCH_LINGER), and this test counts offsets.
    with override_settings(TURBO_ASYNC={**getattr(settings, "TURBO_ASYNC", {}), "BATCH_MAX_SIZE": 1}):
        for n in range(3):
            MessageFactory(room=room, text=f"early {n}")
        wait_offset(redis_server, room, 3)

    client = StreamClient(live.ws_url, live.origin)
    try:
        subscribe(client, signed, rendered)
        replayed = frames_until_quiet(client)
        assert [f["offset"] for f in replayed] == [1, 2, 3]
        assert {f["epoch"] for f in replayed} == {rendered.epoch}
        assert [n for n in range(3) if f"early {n}" in replayed[n]["data"]] == [0, 1, 2]
    finally:
        client.close()


def test_a_render_whose_offsets_were_lost_asks_the_page_to_refresh(live: Uvicorn, redis_server: RedisServer) -> None:
    with suppress():
        room = RoomFactory()
    signed, rendered = fetch_room(live, room)
    group = room.stream.broadcastable_stream_name
    # What a flush or an eviction does to this stream's counter: the next batch starts an epoch.
    redis_server.client().delete(history.position_key(group), history.history_key(group))
    MessageFactory(room=room, text="after the flush")
    wait_offset(redis_server, room, 1)

    client = StreamClient(live.ws_url, live.origin)
    try:
        subscribe(client, signed, rendered)
        reply = client.receive()
        assert reply["type"] == "reset" and reply["signed_channel_name"] == signed, reply
        assert "epoch changed" in reply["reason"]
    finally:
        client.close()
