"""Worker throughput and memory: one Celery worker process (solo pool, task events on) drains
10,000 queued broadcasts of the chat stream; a raw loop does the same reload + render +
group_send without Celery. Run by run.py (variant turbo_async).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.benchmarks.common import setup_django, write_result

TASKS = int(os.environ.get("BENCH_TASKS", "10000"))
MARK_EVERY = 500
RAW = 3_000


def main() -> None:
    setup_django()
    import redis
    from django.apps import apps
    from django.conf import settings

    from tests.services import CeleryWorker
    from turbo_async import suppress
    from turbo_async.changes import Change
    from turbo_async.publish import send

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    broker = redis.Redis.from_url(settings.REDIS_URL)
    broker.delete("celery", "bench:marks")

    with suppress():
        room = Room.objects.create(name="throughput")
    Message.objects.bulk_create(
        [Message(room=room, text=f"message {i}") for i in range(TASKS)], batch_size=1000
    )
    pks = list(Message.objects.filter(room=room).values_list("pk", flat=True))
    # Queued before the worker starts, so that the worker never waits for the producer.
    for pk in pks:
        send(Change("chat.message", pk, "save", True), "default")  # raises if the broker fails
    assert broker.llen("celery") == TASKS, broker.llen("celery")

    events = os.environ.get("BENCH_EVENTS", "1") == "1"
    logs = Path(tempfile.mkdtemp(prefix="bench_worker_"))
    worker = CeleryWorker(
        logs, name="bench-worker", concurrency=1, app="tests.benchmarks.worker", events=events,
        pool=os.environ.get("BENCH_POOL", "solo"),  # one worker process, as the goal says
        BENCH_MARK_EVERY=str(MARK_EVERY),
    )
    worker.start()
    try:
        marks: list[list[float]] = []
        deadline = time.monotonic() + 240
        while len(marks) < TASKS // MARK_EVERY:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did {len(marks) * MARK_EVERY} tasks:\n{worker.log()}")
            item = broker.blpop("bench:marks", timeout=1)
            if item is not None:
                marks.append(json.loads(item[1]))
        log = worker.log()  # before stopping: SIGTERM kills the prefetched tasks noisily
    finally:
        worker.stop()
    if "Traceback" in log:
        raise RuntimeError(f"the worker logged an error:\n{log[-3000:]}")

    # The first 1,000 tasks warm up (imports, template cache, connections).
    rates = [MARK_EVERY / (later[1] - earlier[1]) for earlier, later in pairwise(marks[1:])]
    rss = {int(done): kb for done, _, kb in marks}
    result: dict[str, Any] = {
        "worker_per_s": statistics.median(rates),
        "rss_1k_mb": rss[min(1000, TASKS)] / 1024,
        "rss_10k_mb": rss[TASKS] / 1024,
    }
    result["raw_per_s"] = raw_loop(Message, pks[:RAW])
    write_result(result)


def raw_loop(Message: Any, pks: list[int]) -> float:
    """What a worker cannot avoid: reload the row and its room, render the template, one
    ``group_send`` on a long-lived event loop. No Celery, no hooks, no registry."""
    from channels.layers import get_channel_layer
    from django.template.loader import render_to_string

    from turbo_async.frames import frame_markup
    from turbo_async.names import group_name

    layer = get_channel_layer()
    loop = asyncio.new_event_loop()
    rates = []
    for start in range(0, len(pks), MARK_EVERY):
        chunk = pks[start : start + MARK_EVERY]
        began = time.perf_counter()
        for pk in chunk:
            message = Message._base_manager.get(pk=pk)
            room = message.room
            html = render_to_string("chat/message.html", {"message": message})
            group = group_name("chat:RoomStream", [room.pk], {})
            markup = frame_markup("append", target="messages", html=html)
            loop.run_until_complete(
                layer.group_send(
                    group, {"type": "turbo.stream", "group": group, "stream": "chat:RoomStream", "data": markup}
                )
            )
        rates.append(len(chunk) / (time.perf_counter() - began))
    loop.close()
    return statistics.median(rates[1:])


if __name__ == "__main__":
    sys.exit(main())
