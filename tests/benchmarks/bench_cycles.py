"""uvicorn's memory over WebSocket connect / subscribe / close cycles, for each channels_redis layer.

    python -m tests.benchmarks.bench_cycles

Starts its own Redis and, per layer of ``BENCH_LAYERS`` (``core,pubsub``), one uvicorn process
(tests.asgi, ``TURBO_TEST_LAYER`` picks the layer). ``BENCH_CYCLES_CONCURRENCY`` (50) clients
each connect, subscribe to one of 50 streams, read the answer and close, again and again, while this
process sends a frame to every stream 20 times a second (frames reach sockets as they close, which
is what leaves channels_redis' per-socket receive buffers behind). uvicorn's RSS is read after a
warm-up of 500 cycles, after 2,000 and after ``BENCH_CYCLES`` (10,000) cycles. Nothing is asserted:
tests/integration/test_abuse.py holds the promise that closed sockets leave no buffers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_abuse import print_rows, stack_for_test_settings  # noqa: E402
from tests.services import rss_mb  # noqa: E402

CYCLES = int(os.environ.get("BENCH_CYCLES", "10000"))
CONCURRENCY = int(os.environ.get("BENCH_CYCLES_CONCURRENCY", "50"))
LAYERS = os.environ.get("BENCH_LAYERS", "core,pubsub").split(",")
WARMUP = 500
CHECKPOINTS = (WARMUP, 2000, CYCLES)


async def cycles(url: str, origin: str, names: list[tuple[str, str]], pid: int, layer: Any) -> dict[int, float]:
    from websockets.asyncio.client import connect

    done = 0
    readings: dict[int, float] = {}
    stop = asyncio.Event()

    async def frames() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for group, _signed in names:
                await layer.group_send(group, {"type": "turbo.stream", "signed_channel_name": "x", "data": f"f{n}"})
            await asyncio.sleep(0.05)

    async def client() -> None:
        nonlocal done
        while done < CYCLES:
            name = names[done % len(names)]
            async with connect(url, origin=origin, open_timeout=60, compression=None) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": name[1]}))
                reply = json.loads(await ws.recv())
                assert reply.get("type") == "subscribed", reply
            done += 1
            if done in CHECKPOINTS:
                mark = done
                await asyncio.sleep(2)  # let the server finish the last closes
                readings[mark] = rss_mb(pid)

    sender = asyncio.create_task(frames())
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    stop.set()
    await sender
    return readings


def main() -> None:
    tmp, redis = stack_for_test_settings("bench_cycles_")
    from django.conf import settings
    from django.utils.module_loading import import_string

    from tests.services import Uvicorn
    from tests.testapp.streams import RoomStream

    rows: list[tuple[str, str]] = []
    try:
        streams = [RoomStream(n) for n in range(50)]
        for layer_name in LAYERS:
            redis.flushall()
            web = Uvicorn(tmp / "logs", name=f"web-cycles-{layer_name}", TURBO_TEST_LAYER=layer_name)
            web.start()
            assert web.process is not None
            pid = web.process.pid
            start_rss = rss_mb(pid)
            sender = import_string(settings.LAYERS[layer_name])(hosts=[{"address": redis.url}])
            names = [(s.broadcastable_stream_name, s.signed_stream_name) for s in streams]
            began = time.monotonic()
            readings = asyncio.run(cycles(web.ws_url, web.origin, names, pid, sender))
            took = time.monotonic() - began
            log = web.log()
            web.stop()
            base = readings[WARMUP]
            rows.append((
                f"{layer_name}: RSS start / after {WARMUP} / 2,000 / {CYCLES:,} cycles",
                f"{start_rss:.0f} / {base:.0f} / {readings[2000]:.0f} / {readings[CYCLES]:.0f} MB",
            ))
            rows.append((
                f"{layer_name}: growth 500 -> 2,000 / 500 -> {CYCLES:,}",
                f"{readings[2000] - base:+.1f} / {readings[CYCLES] - base:+.1f} MB "
                f"({CYCLES / took:.0f} cycles/s, {log.count('Traceback')} tracebacks)",
            ))
    finally:
        redis.stop()
    print_rows(rows)

if __name__ == "__main__":
    main()
