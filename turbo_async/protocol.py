"""Layer 0 (a leaf): the wire protocol of turbo_async's WebSocket, as data and pure functions.

What a client sends (``{"type": "subscribe" | "unsubscribe", "signed_channel_name": "...",
"epoch": "...", "offset": n, "ranges": true}``) is parsed by :func:`parse`; what the server sends
is made here: a frame message (:func:`frame_message`, byte for byte turbo-django's
``{"signed_channel_name": ..., "data": ...}`` with the publication's position after it), and the frames
queued for one socket merged into one message (:func:`merge`). The message types and close codes
both ends know are named here, as is the ``type`` of the messages workers send through the
channel layer (:data:`MESSAGE_TYPE`). No I/O: :mod:`turbo_async.consumers` speaks it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MESSAGE_TYPE = "turbo.stream"
"""The ``type`` of the channel-layer messages that carry a stream's frames (workers send them;
``TurboStreamsConsumer.turbo_stream`` handles them)."""

RESET_MESSAGE_TYPE = "turbo.reset"
"""The ``type`` of the message a web process's fan-out hands its sockets when their stream's
missed frames cannot be replayed (``TurboStreamsConsumer.turbo_reset``)."""

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
PING = "ping"
RESET = "reset"
BAD_OFFSET = "bad_offset"
SIGNATURE_EXPIRED = "signature_expired"
"""The ``code`` of the error frame refusing a signature older than ``SIGNATURE_MAX_AGE``."""

POLICY_VIOLATION = 1008
"""The WebSocket close code of a socket closed for exceeding its message budget (RFC 6455)."""

TRY_AGAIN_LATER = 1013
"""The WebSocket close code of a socket closed because it fell ``SOCKET_BACKLOG`` messages behind."""

# The reasons of the server's closes (at most 123 bytes, RFC 6455): the browser client shows them.
LAYER_DOWN_REASON = "the server's channel layer (Redis) is unreachable; see the server log"
"""Code 1011: the socket could not get a channel (the page reconnects with backoff)."""
SLOW_READER_REASON = "too many frames waiting for this page; reconnect and catch up"
ABUSE_REASON = "too many messages from this page (MESSAGE_BURST, MAX_MESSAGES_PER_SECOND)"

MERGE_FRAMES = 64
MERGE_BYTES = 256 * 1024
"""At most this many frames, of at most this many bytes of ``data`` in all, go out as one message
to a socket whose frames queued up (see :func:`merge`)."""


class ProtocolError(ValueError):
    """A client message that cannot be acted on; ``str()`` is the error frame's text, and
    ``signed_name`` the name it concerns, when the message had one."""

    def __init__(self, message: str, signed_name: Any = None) -> None:
        super().__init__(message)
        self.signed_name = signed_name


@dataclass(frozen=True)
class ClientMessage:
    """A parsed subscribe or unsubscribe. ``epoch`` and ``offset`` are as the client sent them
    (``history.parse`` checks them)."""

    type: str
    signed_name: str
    epoch: Any = None
    offset: Any = None
    ranges: bool = False


def parse(text: str | None, max_bytes: int) -> ClientMessage:
    """The client message in ``text``; raises :class:`ProtocolError` saying what is wrong with it.
    The size is checked before anything is parsed.

    >>> parse('{"type": "subscribe", "signed_channel_name": "abc"}', 16384).type
    'subscribe'
    """
    if text is None:
        raise ProtocolError("binary messages are not supported; send JSON text")
    # A str has at least one UTF-8 byte per character and at most four: most sizes are known
    # without encoding. "surrogatepass": a lone surrogate must not raise (browsers never send one).
    length = len(text)
    if length > max_bytes or (length * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise ProtocolError(f"message larger than {max_bytes} bytes")
    try:
        content = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(content, dict):
        raise ProtocolError("message must be a JSON object")
    message_type = content.get("type")
    signed_name = content.get("signed_channel_name")
    if message_type not in (SUBSCRIBE, UNSUBSCRIBE):
        raise ProtocolError(
            f"unknown message type {short(message_type)}; expected 'subscribe' or 'unsubscribe'", signed_name
        )
    if not isinstance(signed_name, str):
        raise ProtocolError("signed_channel_name must be a string")
    return ClientMessage(
        message_type, signed_name, content.get("epoch"), content.get("offset"), content.get("ranges") is True
    )


def merge(message: dict[str, Any], queued: deque[dict[str, Any]], last: tuple[str, int] | None) -> dict[str, Any]:
    """``message`` and the frames of its group queued right behind it (taken from ``queued``), as
    one message.

    A web process that cannot write every frame to every socket as fast as frames come
    (hundreds of sockets on one stream) would queue them, and each frame would then wait for
    all the writes before it: the delay would grow with the load. Instead, the frames that
    queued up for a socket meanwhile go out in one message, whose ``data`` holds their
    ``<turbo-stream>`` elements in order (Turbo applies them in order), with the offset of the
    last and ``"from_offset"`` the first: one write per socket however many frames waited.

    Only for numbered frames that follow, without a gap, ``last`` (the epoch and offset of the last
    frame this socket was sent: the client holds everything before them), up to ``MERGE_FRAMES``
    frames and ``MERGE_BYTES`` bytes; a message that cannot be merged is returned as it is."""
    if not queued or message.get("type") != MESSAGE_TYPE or not isinstance(message.get("data"), str):
        return message
    group, epoch, first = message.get("group"), message.get("epoch"), message.get("offset")
    if last is None or not isinstance(first, int) or last[0] != epoch or first != last[1] + 1:
        return message
    parts = [message["data"]]
    size = len(parts[0])
    end = first
    while queued and len(parts) < MERGE_FRAMES:
        following = queued[0]
        data = following.get("data")
        if (
            following.get("type") != MESSAGE_TYPE or following.get("group") != group
            or following.get("epoch") != epoch or following.get("offset") != end + 1
            or not isinstance(data, str) or size + len(data) > MERGE_BYTES
        ):
            break
        queued.popleft()
        parts.append(data)
        size += len(data)
        end += 1
    if end == first:
        return message
    return {**message, "data": "".join(parts), "offset": end, "from_offset": first}


@lru_cache(maxsize=256)
def _encoded(data: str) -> str:
    return json.dumps(data)


def frame_message(
    signed_name: str, data: str, epoch: Any = None, offset: Any = None, from_offset: Any = None
) -> str:
    """``json.dumps({"signed_channel_name": signed_name, "data": data})``, byte for byte, with
    the frames JSON-encoded once per process however many sockets of the process receive them
    (the cache's key is the frames' text: with the pub/sub layer, one shared string); with the
    publication's ``"epoch"`` and ``"offset"`` after them when it has them (a turbo-django client
    ignores extra fields), and ``"from_offset"``, the first offset, when ``data`` holds several
    numbered frames (:func:`merge`)."""
    run = isinstance(from_offset, int) and isinstance(offset, int) and from_offset < offset
    # A run's data is the socket's own (up to MERGE_BYTES): encoded here, not kept in the cache of
    # the frames every socket shares, which would otherwise hold up to 256 such strings.
    encoded = json.dumps(data) if run else _encoded(data)
    head = f'{{"signed_channel_name": {_encoded_name(signed_name)}, "data": {encoded}'
    if not (isinstance(epoch, str) and isinstance(offset, int)):
        return head + "}"
    tail = f', "from_offset": {from_offset}' if run else ""
    return f'{head}, "epoch": {json.dumps(epoch)}, "offset": {offset}{tail}}}'


@lru_cache(maxsize=4096)
def _encoded_name(signed_name: str) -> str:
    return json.dumps(signed_name)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error frames echo what the client sent)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
