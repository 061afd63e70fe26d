"""The consumer's wire protocol, through Channels' WebsocketCommunicator and in-memory layer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core import signing

from demo.chat.broadcasts import RoomListStream
from turbo_async.consumers import TurboStreamsConsumer
from turbo_async.delivery import message


async def connect() -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/")
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send(communicator: WebsocketCommunicator, payload: dict[str, Any]) -> dict[str, Any]:
    await communicator.send_to(text_data=json.dumps(payload))
    return json.loads(await communicator.receive_from(timeout=2))


def room_list_names() -> tuple[str, str]:
    stream = RoomListStream()
    return stream.signed_stream_name, stream.broadcastable_stream_name


async def test_subscribe_is_acknowledged_and_frames_arrive() -> None:
    signed, group = room_list_names()
    communicator = await connect()
    assert await send(communicator, {"type": "subscribe", "signed_channel_name": signed}) == {
        "type": "subscribed",
        "signed_channel_name": signed,
    }
    frame = '<turbo-stream action="refresh"></turbo-stream>'
    await get_channel_layer().group_send(group, message(group, "chat:RoomListStream", frame))
    assert json.loads(await communicator.receive_from(timeout=2)) == {
        "signed_channel_name": signed,
        "data": frame,
    }
    await communicator.disconnect()


async def test_unsubscribe_stops_frames() -> None:
    signed, group = room_list_names()
    communicator = await connect()
    await send(communicator, {"type": "subscribe", "signed_channel_name": signed})
    await communicator.send_to(text_data=json.dumps({"type": "unsubscribe", "signed_channel_name": signed}))
    await get_channel_layer().group_send(group, message(group, "chat:RoomListStream", "x"))
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


def signed_at(moment: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """The room list's signed name as signed at the Unix time ``moment``."""
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(moment))
    return RoomListStream().signed_stream_name


async def test_each_signature_of_a_stream_gets_the_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page may hold two signatures of one stream made at different times (a Turbo Frame
    loaded later): both are one group, and each gets its copy of the frame."""
    first, second = signed_at(1_700_000_000, monkeypatch), signed_at(1_700_000_100, monkeypatch)
    assert first != second
    group = RoomListStream().broadcastable_stream_name
    communicator = await connect()
    await send(communicator, {"type": "subscribe", "signed_channel_name": first})
    await send(communicator, {"type": "subscribe", "signed_channel_name": second})
    await get_channel_layer().group_send(group, message(group, "chat:RoomListStream", "x"))
    received = [json.loads(await communicator.receive_from(timeout=2))["signed_channel_name"] for _ in range(2)]
    assert sorted(received) == sorted([first, second])
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("not json", "message is not valid JSON"),
        ("[1, 2]", "message must be a JSON object"),
        ('{"type": "dance"}', "unknown message type 'dance'; expected 'subscribe' or 'unsubscribe'"),
        ('{"type": "subscribe"}', "signed_channel_name must be a string"),
        ('{"type": "subscribe", "signed_channel_name": "forged:abc"}', "invalid signed_channel_name: bad signature"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_open(raw: str, error: str) -> None:
    communicator = await connect()
    await communicator.send_to(text_data=raw)
    reply = json.loads(await communicator.receive_from(timeout=2))
    assert reply["type"] == "error"
    assert reply["error"] == error
    signed, _ = room_list_names()
    assert (await send(communicator, {"type": "subscribe", "signed_channel_name": signed}))["type"] == "subscribed"
    await communicator.disconnect()
