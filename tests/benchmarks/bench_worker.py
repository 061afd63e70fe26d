"""Worker throughput and memory: one Celery worker process (solo pool, task events on) drains
10,000 queued broadcasts of the chat stream, first as the outbox publishes them under load
(``turbo_async.batch`` tasks of ``BATCH_MAX_SIZE`` changes, sent with
``turbo_async.publish.send``), then as one task per change (a fresh worker); a raw loop
does the same reload + render + group_send per change without Celery. Rates are per change.
Run by run.py (variant turbo_async). ``BENCH_MODES`` (``batched,single``) and ``BENCH_RAW``
(``1``) choose what runs; ``BENCH_METRICS=1`` turns turbo_async's metrics on (settings.py).
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
    from django.apps import apps

    from turbo_async import conf, suppress

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        room = Room.objects.create(name="throughput")
    Message.objects.bulk_create(
        [Message(room=room, text=f"message {i}") for i in range(TASKS)], batch_size=1000
    )
    pks = list(Message.objects.filter(room=room).values_list("pk", flat=True))
    batch = conf.get().BATCH_MAX_SIZE
    result: dict[str, Any] = {"batch_size": batch}
    # Each drained by a fresh worker: the outbox's batches (as it publishes under load), then
    # one task per change (as it publishes a lone change).
    modes = os.environ.get("BENCH_MODES", "batched,single").split(",")
    for mode, size in (("batched", batch), ("single", 1)):
        if mode not in modes:
            continue
        rates, rss, cpu = drain(pks, size)
        result[f"{mode}_cpu_ms"] = cpu * 1000
        result[f"{mode}_per_s"] = statistics.median(rates)
        result[f"{mode}_rates"] = rates
        result[f"{mode}_rss_1k_mb"] = rss[min(1000, TASKS)] / 1024
        result[f"{mode}_rss_10k_mb"] = rss[TASKS] / 1024
    if os.environ.get("BENCH_RAW", "1") == "1":
        result["raw_per_s"] = raw_loop(Message, pks[:RAW])
    write_result(result)


def drain(pks: list[int], size: int) -> tuple[list[float], dict[int, int], float]:
    """Queue a broadcast of each of ``pks`` in Celery messages of ``size`` changes, then let one
    worker process drain them: the rates over 500-change chunks after the first 1,000, the
    pool process's RSS in kB after each chunk, and its CPU seconds per change after the first 1,000
    (less moved by other load on the machine than the rate)."""
    import redis
    from django.conf import settings

    from tests.services import CeleryWorker
    from turbo_async.changes import Change
    from turbo_async.publish import send

    broker = redis.Redis.from_url(settings.REDIS_URL)
    broker.delete("celery", "bench:marks")
    changes = [Change("chat.message", pk, "save", True) for pk in pks]
    # Queued before the worker starts, so that the worker never waits for the producer.
    for start in range(0, len(changes), size):  # a task of one change when size is 1
        send([(change, "default") for change in changes[start : start + size]])  # raises if the broker fails
    messages = -(-len(pks) // size)
    assert broker.llen("celery") == messages, broker.llen("celery")

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
        while not marks or marks[-1][0] < len(pks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did {marks[-1:]} changes:\n{worker.log()}")
            item = broker.blpop("bench:marks", timeout=1)
            if item is not None:
                marks.append(json.loads(item[1]))
        log = worker.log()  # before stopping: SIGTERM kills the prefetched tasks noisily
    finally:
        worker.stop()
    if "Traceback" in log:
        raise RuntimeError(f"the worker logged an error:\n{log[-3000:]}")

    # The first 1,000 changes warm up (imports, template cache, connections).
    warm = [mark for mark in marks if mark[0] >= min(1000, len(pks) // 2)]
    rates = [(later[0] - earlier[0]) / (later[1] - earlier[1]) for earlier, later in pairwise(warm)]
    cpu = (warm[-1][3] - warm[0][3]) / (warm[-1][0] - warm[0][0])
    return rates, {int(mark[0]): mark[2] for mark in marks}, cpu


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
