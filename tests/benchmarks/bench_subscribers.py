"""WebSocket subscribers in one asyncio process (started by bench_latency.py).

    python -m tests.benchmarks.bench_subscribers OUT CLIENTS WARMUP EXPECTED PROTOCOL \\
        NAME|NAME... URL,ORIGIN [URL,ORIGIN ...]

Client i subscribes to the (i mod rooms)-th signed name on the (i mod servers)-th server.
PROTOCOL is ``turbo_async`` (each subscription is answered with ``subscribed``) or
``turbo_django`` (no answer: the process waits a moment instead; the warm-up saves cover the rest).
Prints ``ready`` once every client is subscribed, then records ``(seq, arrival time, server index)`` for each
frame until every client has ``EXPECTED`` frames numbered ``WARMUP`` or more (or 60 s more than
``BENCH_SECONDS`` pass) and writes them to OUT as JSON, with the count of frames that reached a
socket after a later one (or twice): the frames of one room are numbered in commit order, so
every socket must get them in that order. One WebSocket message may carry several frames (turbo_async batches
the saves that queued up): each ``seq-N`` in it counts, with the message's arrival time.

The clients speak just enough RFC 6455 to subscribe and read (handshake, masked text frames out,
unmasked frames in, pongs for the server's pings), over plain asyncio streams: a general
WebSocket client's per-message work made this one process, which shares the machine's CPUs with
the servers it measures, the first thing to saturate at 10,000 messages a second (py-spy: 100%
busy parsing frames while the web processes were not). Every byte of every message still goes
through the kernel and is read and searched here; the arrival time is taken when its bytes are read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import time
from urllib.parse import urlsplit

SEQ = re.compile(rb"seq-(\d+)")
CONNECT_AT_ONCE = 50
HANDSHAKE_TIMEOUT = float(os.environ.get("BENCH_HANDSHAKE_TIMEOUT", "60"))
READ_TIMEOUT = 60 + float(os.environ.get("BENCH_SECONDS", "5"))
"""Seconds the sockets read frames after ``ready`` (the saves last ``BENCH_SECONDS``)."""
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked frame, as a client must send it."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def handshake(url: str, origin: str) -> bytes:
    """The client's opening handshake for ``url``, sent from ``origin``."""
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n\r\n"
    ).encode()


def frame_at(buffer: bytes | bytearray, at: int) -> tuple[int, int, int] | None:
    """The server's (unmasked) frame starting at ``at``, if it is there whole: its first byte (FIN
    and opcode), where its payload starts and where it ends; ``None`` if more bytes are needed."""
    if len(buffer) - at < 2:
        return None
    length, start = buffer[at + 1] & 0x7F, at + 2
    if length == 126:
        if len(buffer) - at < 4:
            return None
        length, start = int.from_bytes(buffer[at + 2 : at + 4], "big"), at + 4
    elif length == 127:
        if len(buffer) - at < 10:
            return None
        length, start = int.from_bytes(buffer[at + 2 : at + 10], "big"), at + 10
    if len(buffer) < start + length:
        return None
    return buffer[at], start, start + length


class Socket:
    """A WebSocket client connection: :meth:`messages` returns the text messages read so far."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.partial = bytearray()

    @classmethod
    async def connect(cls, url: str, origin: str) -> Socket:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=2**22)
        writer.write(handshake(url, origin))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        self.writer.write(client_frame(TEXT, text.encode()))

    async def messages(self) -> list[bytes]:
        """The text messages in the next bytes read (at least one read; possibly none complete)."""
        chunk = await self.reader.read(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer = self.buffer
        buffer += chunk
        found: list[bytes] = []
        at = 0
        while (frame := frame_at(buffer, at)) is not None:
            first, start, end = frame
            payload = bytes(buffer[start:end])
            at = end
            opcode = first & 0x0F
            if opcode == PING:
                self.writer.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                raise ConnectionError("the server closed the WebSocket")
            elif opcode in (TEXT, 0x0):  # a text frame, or the continuation of one
                self.partial += payload
                if first & 0x80:  # FIN
                    found.append(bytes(self.partial))
                    self.partial.clear()
        del buffer[:at]
        return found

    async def close(self) -> None:
        self.writer.write(client_frame(CLOSE, (1000).to_bytes(2, "big")))
        self.writer.close()


async def subscribe(url: str, origin: str, signed_name: str, protocol: str) -> Socket:
    ws = await Socket.connect(url, origin)
    subscription: dict[str, object] = {"type": "subscribe", "signed_channel_name": signed_name}
    if protocol == "turbo_async":
        subscription["ranges"] = True  # as turbo-async.js: frames that queued up come as one message
    ws.send_text(json.dumps(subscription))
    if protocol == "turbo_async":
        replies: list[bytes] = []
        while not replies:
            replies = await asyncio.wait_for(ws.messages(), 60)
        reply = json.loads(replies[0])
        assert reply.get("type") == "subscribed", reply
    return ws


async def main() -> None:
    out, clients, warmup, expected, protocol, names, *servers = sys.argv[1:]
    signed_names = names.split("|")
    first, wanted = int(warmup), int(expected)
    sockets: list[Socket] = []
    for start in range(0, int(clients), CONNECT_AT_ONCE):
        batch = []
        for i in range(start, min(int(clients), start + CONNECT_AT_ONCE)):
            url, origin = servers[i % len(servers)].split(",")
            batch.append(subscribe(url, origin, signed_names[i % len(signed_names)], protocol))
        sockets += await asyncio.gather(*batch)
    if protocol != "turbo_async":  # its group_add runs after the message: give it time
        await asyncio.sleep(1 + len(sockets) / 500)
    arrivals: list[tuple[int, float, int]] = []
    # Per socket: frames that came after a later one (or twice), and sockets that got them all.
    disorder = {"out_of_order": 0, "complete": 0}

    async def read(ws: Socket, server: int) -> None:
        got, last = 0, -1
        while got < wanted:
            texts = await ws.messages()
            now = time.time()
            for text in texts:
                for found in SEQ.findall(text):
                    seq = int(found)
                    if seq >= first:
                        arrivals.append((seq, now, server))
                        got += 1
                        disorder["out_of_order"] += seq <= last
                        last = max(last, seq)
        disorder["complete"] += 1

    print("ready", flush=True)
    readers = [asyncio.ensure_future(read(ws, i % len(servers))) for i, ws in enumerate(sockets)]
    await asyncio.wait(readers, timeout=READ_TIMEOUT)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    with open(out, "w") as f:
        json.dump({"arrivals": arrivals, "sockets": len(sockets), **disorder}, f)


if __name__ == "__main__":
    asyncio.run(main())
