"""Metrics on against off, paired: both settings run at the same time, fed the same work, so that
what the shared machine does to one it does to the other (run by run.py, one process per round;
``python -m tests.benchmarks.bench_metrics worker|fanout ON`` alone, ``ON`` the index, 0 or 1, of
the process that has metrics on).

- ``worker``: two Celery worker processes (``--pool solo``), one with ``TURBO_ASYNC["METRICS"]``
  on, one off, each on its own Redis database (broker and channel layer), drain the same
  ``BENCH_TASKS`` changes queued as the outbox batches them under load (``turbo_async.batch``
  tasks, sent once and copied to both queues), side by side. For each, after its first 1,000
  changes: its CPU seconds per change, and its rate while both drain (tests/benchmarks/worker.py's
  marks, every 100 changes).
- ``fanout``: two uvicorn processes, one with metrics on, one off, share the subscribers of
  ``BENCH_ROOMS`` rooms x ``BENCH_SUBSCRIBERS`` (client i on process i mod 2, as
  bench_latency.py spreads them), and one worker and the saving process (metrics on both, so the
  frames carry their commit time) send them ``BENCH_RATE`` saves/s for ``BENCH_SECONDS`` s after a
  second of warm-up. For each process: the p99 of commit to frame read by its subscribers, and
  its CPU time (:func:`cpu_seconds`) from the first measured save to the last frame read, per
  frame its subscribers read; its CPU time for start-up and the subscribers connecting; and its
  whole CPU time per frame (start-up, connections and warm-up included, as bench_latency.py counts
  it).

``BENCH_PROFILE=DIR`` also samples each worker, or each web process while the measured saves run,
with py-spy (:func:`profile`).

Nothing timed is asserted: the result is each figure of each process; run.py compares them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.bench_latency import SECONDS, unexpected_errors
from tests.benchmarks.common import ROOT, percentile, setup_django, write_result

TASKS = int(os.environ.get("BENCH_TASKS", "6000"))
WARM = 1000
RATE = int(os.environ.get("BENCH_RATE", "50"))
ROOMS = int(os.environ.get("BENCH_ROOMS", "1"))
PER_ROOM = int(os.environ.get("BENCH_SUBSCRIBERS", "200"))


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``'s threads so far, in nanoseconds' resolution (the scheduler's
    ``/proc/<pid>/task/*/schedstat``; ``/proc/<pid>/stat`` counts 10 ms ticks, about 1% of what a
    web process spends in a round)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def worker_round(on: int) -> dict[str, Any]:
    import redis
    from django.apps import apps
    from django.conf import settings

    from tests.services import CeleryWorker
    from turbo_async import conf, suppress
    from turbo_async.changes import Change
    from turbo_async.publish import send_batch

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        room = Room.objects.create(name="metrics")
    Message.objects.bulk_create([Message(room=room, text=f"message {i}") for i in range(TASKS)], batch_size=1000)
    pks = list(Message.objects.filter(room=room).values_list("pk", flat=True))
    size = conf.get().BATCH_MAX_SIZE
    source = redis.Redis.from_url(settings.REDIS_URL)
    source.delete("celery")
    for start in range(0, len(pks), size):
        send_batch([(Change("chat.message", pk, "save", True), "default") for pk in pks[start : start + size]])
    queued = source.lrange("celery", 0, -1)
    source.delete("celery")
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    urls = [f"{base}/{db}" for db in (1, 2)]
    brokers = [redis.Redis.from_url(url) for url in urls]
    for broker in brokers:
        broker.flushdb()
        broker.rpush("celery", *queued)
    logs = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    workers = [
        CeleryWorker(
            logs, name=f"metrics-worker-{i}", concurrency=1, app="tests.benchmarks.worker", pool="solo",
            BENCH_REDIS_URL=urls[i], BENCH_METRICS="1" if i == on else "0", BENCH_MARK_EVERY="100",
        )
        for i in range(2)
    ]
    # Started without waiting for each to be ready, so that neither drains alone for long.
    for worker in workers:
        worker.start_in(ROOT)
    profilers = profile([w.process.pid for w in workers if w.process is not None], logs, "worker")
    marks: list[list[list[float]]] = [[], []]
    try:
        deadline = time.monotonic() + 240
        while any(not m or m[-1][0] < len(pks) for m in marks):
            if time.monotonic() > deadline or any(w.process is None or w.process.poll() is not None for w in workers):
                raise RuntimeError(f"the workers did {[m[-1:] for m in marks]}:\n" + "\n".join(w.log() for w in workers))
            for i, broker in enumerate(brokers):
                while (item := broker.lpop("bench:marks")) is not None:
                    marks[i].append(json.loads(item))
            time.sleep(0.05)
        logs_text = [worker.log() for worker in workers]
    finally:
        for profiler in profilers:
            profiler.wait(60)
        for worker in workers:
            worker.stop()
    if any("Traceback" in text for text in logs_text):
        raise RuntimeError("a worker logged an error:\n" + "\n".join(text[-3000:] for text in logs_text))
    # The rate over the time both drained (one may finish first and then run alone); the CPU per
    # change over each one's changes after the first WARM.
    begin = max(next(mark[1] for mark in m if mark[0] >= WARM) for m in marks)
    end = min(m[-1][1] for m in marks)
    result: dict[str, Any] = {"on": on, "changes": len(pks), "both_s": end - begin}
    for i, state in ((on, "on"), (1 - on, "off")):
        warm = [mark for mark in marks[i] if mark[0] >= WARM]
        first, last = warm[0], warm[-1]
        result[f"{state}_cpu_ms"] = (last[3] - first[3]) / (last[0] - first[0]) * 1000
        both = [mark for mark in warm if begin <= mark[1] <= end]
        if len(both) < 2:  # hardly ran together (one started late): its own rate, alone
            both = warm
        result[f"{state}_per_s"] = (both[-1][0] - both[0][0]) / (both[-1][1] - both[0][1])
    return result


def fanout_round(on: int) -> dict[str, Any]:
    from django.apps import apps
    from django.db import transaction

    from tests.services import CeleryWorker, Uvicorn, subprocess_env
    from turbo_async import suppress

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        rooms = [Room.objects.create(name=f"metrics {i}") for i in range(ROOMS)]
    warmup = max(1, RATE // ROOMS) * ROOMS
    saves = max(1, RATE * SECONDS // ROOMS) * ROOMS
    logs = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    worker = CeleryWorker(logs, name="metrics-fanout-worker", concurrency=1, pool="solo", BENCH_METRICS="1")
    webs = [
        Uvicorn(logs, name=f"web-{i}", app="tests.benchmarks.asgi:application", BENCH_METRICS="1" if i == on else "0")
        for i in range(2)
    ]
    out = logs / "arrivals.json"
    subscribers = None
    committed: dict[int, float] = {}
    cpu_before: list[float] = []
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        worker.start()
        for web in webs:
            web.start()
        subscribers = subprocess.Popen(
            [
                sys.executable, "-m", "tests.benchmarks.bench_subscribers", str(out), str(ROOMS * PER_ROOM),
                str(warmup), str(saves // ROOMS), "turbo_async", "|".join(r.stream.signed_stream_name for r in rooms),
                *(f"{w.ws_url},{w.origin}" for w in webs),
            ],
            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
        )
        assert subscribers.stdout is not None
        if subscribers.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscribers did not connect:\n" + "".join(w.log() for w in webs))
        pids = [w.process.pid for w in webs if w.process is not None]
        cpu_ready = [cpu_seconds(pid) for pid in pids]
        start = time.perf_counter()
        for seq in range(warmup + saves):
            if seq == warmup:
                cpu_before = [cpu_seconds(pid) for pid in pids]
                profilers = profile(pids, logs, "web")
            delay = start + seq / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with transaction.atomic():
                transaction.on_commit(lambda seq=seq: committed.__setitem__(seq, time.time()))
                Message.objects.create(room=rooms[seq % ROOMS], text=f"seq-{seq}")
        subscribers.wait(90)
        whole = [cpu_seconds(pid) for pid in pids]
        cpu = [after - before for after, before in zip(whole, cpu_before, strict=True)]
        for profiler in profilers:
            profiler.wait(30)
        errors = [w.log() for w in (*webs, worker) if unexpected_errors(w.log())]
    finally:
        if subscribers is not None and subscribers.poll() is None:
            subscribers.kill()
        for web in webs:
            web.stop()
        worker.stop()
    if errors:
        raise RuntimeError("a server logged an error:\n" + "\n".join(e[-3000:] for e in errors))
    arrivals = json.loads(out.read_text())["arrivals"]
    result: dict[str, Any] = {"on": on, "frames_expected": saves * PER_ROOM}
    for i, state in ((on, "on"), (1 - on, "off")):
        latencies = [(arrived - committed[seq]) * 1000 for seq, arrived, server in arrivals if server == i]
        result[f"{state}_frames"] = len(latencies)
        result[f"{state}_p50_ms"] = percentile(latencies or [float("nan")], 50)
        result[f"{state}_p99_ms"] = percentile(latencies or [float("nan")], 99)
        result[f"{state}_cpu_us_per_frame"] = cpu[i] / max(1, len(latencies)) * 1e6
        result[f"{state}_start_cpu_s"] = cpu_ready[i]  # start-up and the subscribers connecting
        # As bench_latency.py (and this benchmark before it was paired) counted: the process's
        # whole CPU time, start-up, connections and warm-up included, per measured frame.
        result[f"{state}_whole_cpu_us_per_frame"] = whole[i] / max(1, len(latencies)) * 1e6
    return result


def profile(pids: list[int], logs: Path, name: str) -> list[subprocess.Popen[bytes]]:
    """With ``BENCH_PROFILE=DIR``: py-spy (the dev extra) samples each worker from its start, or
    each web process while the measured saves run, for ``BENCH_SECONDS``, into
    ``DIR/<name>-<index>.txt`` (collapsed stacks, one line per stack and its count)."""
    where = os.environ.get("BENCH_PROFILE")
    if not where:
        return []
    Path(where).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
             "--duration", str(SECONDS), "--rate", "200", "--output", str(Path(where) / f"{name}-{i}.txt")],
            stdout=(logs / f"py-spy-{name}-{i}.log").open("wb"), stderr=subprocess.STDOUT,
        )
        for i, pid in enumerate(pids)
    ]


def main() -> None:
    kind, on = sys.argv[1], int(sys.argv[2])
    if kind not in ("worker", "fanout") or on not in (0, 1):
        raise SystemExit("usage: python -m tests.benchmarks.bench_metrics worker|fanout 0|1")
    setup_django()
    write_result(worker_round(on) if kind == "worker" else fanout_round(on))


if __name__ == "__main__":
    main()
