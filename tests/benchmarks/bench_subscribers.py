"""200 WebSocket subscribers in one asyncio process (started by bench_latency.py).

    python -m tests.benchmarks.bench_subscribers OUT EXPECTED NAME|NAME... URL,ORIGIN [URL,ORIGIN ...]

Client i subscribes to the (i mod rooms)-th signed name on the (i mod servers)-th server. Prints ``ready`` once every client is
subscribed, then records ``(seq, arrival time)`` for each frame until every client has
``EXPECTED`` frames (or 60 s pass) and writes them to OUT as JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

from websockets.asyncio.client import connect

CLIENTS = 200
SEQ = re.compile(r"seq-(\d+)")


async def main() -> None:
    out, expected, names, *servers = sys.argv[1:]
    signed_names = names.split("|")
    wanted = int(expected)
    sockets = []
    for i in range(CLIENTS):
        url, origin = servers[i % len(servers)].split(",")
        signed_name = signed_names[i % len(signed_names)]
        ws = await connect(url, origin=origin, open_timeout=30, max_queue=None)  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": signed_name}))
        reply = json.loads(await ws.recv())
        assert reply.get("type") == "subscribed", reply
        sockets.append(ws)
    arrivals: list[tuple[int, float]] = []

    async def read(ws: object) -> None:
        got = 0
        while got < wanted:
            text = await ws.recv()  # type: ignore[attr-defined]
            now = time.time()
            found = SEQ.search(text)
            if found:
                arrivals.append((int(found.group(1)), now))
                got += 1

    print("ready", flush=True)
    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    await asyncio.wait(readers, timeout=60)
    for ws in sockets:
        await ws.close()
    with open(out, "w") as f:
        json.dump(arrivals, f)


if __name__ == "__main__":
    asyncio.run(main())
