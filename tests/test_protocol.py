"""turbo_async.protocol: the pure parser of client messages, the merge of queued frames and the
frame message, without a socket (tests/test_consumers.py drives them through a consumer)."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest

from turbo_async import protocol
from turbo_async.protocol import ClientMessage, ProtocolError, merge, parse


def test_a_subscribe_is_parsed_with_its_position_and_ranges() -> None:
    text = json.dumps({"type": "subscribe", "signed_channel_name": "abc", "epoch": "e1", "offset": 4, "ranges": True})
    assert parse(text, 16384) == ClientMessage("subscribe", "abc", "e1", 4, True)


def test_ranges_is_true_only_when_the_client_says_true() -> None:
    assert parse('{"type": "unsubscribe", "signed_channel_name": "a", "ranges": "yes"}', 100).ranges is False


@pytest.mark.parametrize(
    ("text", "error", "name"),
    [
        (None, "binary messages are not supported; send JSON text", None),
        ("x" * 101, "message larger than 100 bytes", None),
        ("é" * 60, "message larger than 100 bytes", None),  # 60 characters, 120 bytes
        ("{", "message is not valid JSON", None),
        ("[" * 5000 + "]" * 5000, "message larger than 100 bytes", None),
        ("[1]", "message must be a JSON object", None),
        ('{"type": "hello", "signed_channel_name": "n"}',
         "unknown message type 'hello'; expected 'subscribe' or 'unsubscribe'", "n"),
        ('{"type": "subscribe", "signed_channel_name": 5}', "signed_channel_name must be a string", None),
    ],
)
def test_bad_messages_raise_what_is_wrong(text: str | None, error: str, name: Any) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(text, 100)
    assert str(raised.value) == error and raised.value.signed_name == name


def test_deep_nesting_within_the_size_is_refused_as_json() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse("[" * 20000 + "]" * 20000, 10**6)


def frame(offset: int, group: str = "g", epoch: str = "e1") -> dict[str, Any]:
    return {"type": protocol.MESSAGE_TYPE, "group": group, "epoch": epoch, "offset": offset, "data": f"<f{offset}/>"}


def test_frames_that_follow_the_last_one_sent_merge_into_one_message() -> None:
    queued = deque([frame(6), frame(7), frame(9)])
    merged = merge(frame(5), queued, ("e1", 4))
    assert merged["data"] == "<f5/><f6/><f7/>" and merged["offset"] == 7 and merged["from_offset"] == 5
    assert [m["offset"] for m in queued] == [9]  # after a gap: left for the next message


@pytest.mark.parametrize("last", [None, ("e1", 3), ("e0", 4)])
def test_nothing_merges_unless_the_first_frame_follows_the_last_sent(last: tuple[str, int] | None) -> None:
    queued = deque([frame(6)])
    assert merge(frame(5), queued, last) == frame(5) and len(queued) == 1


def test_frames_of_another_group_or_epoch_stop_the_merge() -> None:
    queued = deque([frame(6, group="h"), frame(6)])
    assert merge(frame(5), queued, ("e1", 4)) == frame(5)
    queued = deque([frame(6, epoch="e2")])
    assert merge(frame(5), queued, ("e1", 4)) == frame(5)


def test_a_frame_message_is_turbo_djangos_json_with_the_position_after_it() -> None:
    assert protocol.frame_message("n", "<a/>") == json.dumps({"signed_channel_name": "n", "data": "<a/>"})
    assert json.loads(protocol.frame_message("n", "<a/><b/>", "e1", 7, 6)) == {
        "signed_channel_name": "n", "data": "<a/><b/>", "epoch": "e1", "offset": 7, "from_offset": 6,
    }
