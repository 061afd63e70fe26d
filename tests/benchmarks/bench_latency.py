"""End-to-end latency, commit → WebSocket frame: 50 saves/s, round-robin over ``BENCH_ROOMS``
rooms, watched by 200 subscribers (200 / rooms per room) spread over 2 uvicorn processes,
one Celery worker (concurrency 1). Variant turbo_async; run by run.py.

The time of a message is taken by an on_commit callback registered before the save, so it runs
right after the commit (before turbo_async's publish); its frame carries ``seq-N`` and the
subscriber process notes when each copy arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.common import ROOT, percentile, setup_django, write_result

RATE = 50
SAVES = int(os.environ.get("BENCH_SAVES", "500"))
WARMUP = 50
ROOMS = int(os.environ.get("BENCH_ROOMS", "10"))


def main() -> None:
    setup_django()
    from django.apps import apps
    from django.db import transaction

    from tests.services import CeleryWorker, Uvicorn, subprocess_env
    from turbo_async import suppress

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        rooms = [Room.objects.create(name=f"latency {i}") for i in range(ROOMS)]
    logs = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    worker = CeleryWorker(logs, name="latency-worker", concurrency=1, pool="solo")
    webs = [Uvicorn(logs, name=f"web-{i}") for i in range(2)]
    subscribers = None
    try:
        worker.start()
        for web in webs:
            web.start()
        out = logs / "arrivals.json"
        total = WARMUP + SAVES
        assert total % ROOMS == 0, "every room gets the same number of saves"
        subscribers = subprocess.Popen(
            [
                sys.executable, "-m", "tests.benchmarks.bench_subscribers", str(out),
                str(total // ROOMS), "|".join(r.stream.signed_stream_name for r in rooms),
                *(f"{w.ws_url},{w.origin}" for w in webs),
            ],
            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
        )
        assert subscribers.stdout is not None
        if subscribers.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscribers did not connect")
        committed: dict[int, float] = {}
        start = time.perf_counter()
        for seq in range(total):
            # a fixed rate: the n-th save is due at start + n / RATE
            delay = start + seq / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with transaction.atomic():
                transaction.on_commit(lambda seq=seq: committed.__setitem__(seq, time.time()))
                Message.objects.create(room=rooms[seq % ROOMS], text=f"seq-{seq}")
        subscribers.wait(90)
        arrivals = json.loads(out.read_text())
    finally:
        if subscribers is not None and subscribers.poll() is None:
            subscribers.kill()
        for web in webs:
            web.stop()
        worker.stop()
    latencies = [
        (arrived - committed[seq]) * 1000 for seq, arrived in arrivals if seq >= WARMUP
    ]
    expected = SAVES * 200 // ROOMS
    write_result(
        {
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "frames": len(latencies),
            "frames_expected": expected,
            "rooms": ROOMS,
        }
    )


if __name__ == "__main__":
    main()
