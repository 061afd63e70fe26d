"""WebSocket subscribers in one asyncio process (started by bench_latency.py).

    python -m tests.benchmarks.bench_subscribers OUT CLIENTS WARMUP EXPECTED PROTOCOL \\
        NAME|NAME... URL,ORIGIN [URL,ORIGIN ...]

Client i subscribes to the (i mod rooms)-th signed name on the (i mod servers)-th server.
PROTOCOL is ``turbo_async`` (each subscription is answered with ``subscribed``) or
``turbo_django`` (no answer: the process waits a moment instead; the warm-up saves cover the rest).
Prints ``ready`` once every client is subscribed, then records ``(seq, arrival time)`` for each
frame until every client has ``EXPECTED`` frames numbered ``WARMUP`` or more (or 60 s pass) and
writes them to OUT as JSON. One WebSocket message may carry several frames (turbo_async batches
the saves that queued up): each ``seq-N`` in it counts, with the message's arrival time.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any

from websockets.asyncio.client import connect

SEQ = re.compile(r"seq-(\d+)")
CONNECT_AT_ONCE = 50


async def subscribe(url: str, origin: str, signed_name: str, protocol: str) -> Any:
    ws = await connect(url, origin=origin, open_timeout=60, max_queue=None)  # type: ignore[arg-type]
    await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": signed_name}))
    if protocol == "turbo_async":
        reply = json.loads(await ws.recv())
        assert reply.get("type") == "subscribed", reply
    return ws


async def main() -> None:
    out, clients, warmup, expected, protocol, names, *servers = sys.argv[1:]
    signed_names = names.split("|")
    first, wanted = int(warmup), int(expected)
    sockets: list[Any] = []
    for start in range(0, int(clients), CONNECT_AT_ONCE):
        batch = []
        for i in range(start, min(int(clients), start + CONNECT_AT_ONCE)):
            url, origin = servers[i % len(servers)].split(",")
            batch.append(subscribe(url, origin, signed_names[i % len(signed_names)], protocol))
        sockets += await asyncio.gather(*batch)
    if protocol != "turbo_async":  # its group_add runs after the message: give it time
        await asyncio.sleep(1 + len(sockets) / 500)
    arrivals: list[tuple[int, float]] = []

    async def read(ws: Any) -> None:
        got = 0
        while got < wanted:
            text = await ws.recv()
            now = time.time()
            for found in SEQ.findall(text):
                seq = int(found)
                if seq >= first:
                    arrivals.append((seq, now))
                    got += 1

    print("ready", flush=True)
    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    await asyncio.wait(readers, timeout=60)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    with open(out, "w") as f:
        json.dump(arrivals, f)


if __name__ == "__main__":
    asyncio.run(main())
