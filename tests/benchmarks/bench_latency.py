"""End-to-end fan-out latency, change → WebSocket frame on every socket. Run by run.py, one
process per case, variant and channel layer (``BENCH_LAYER``, settings.py).

``BENCH_ROOMS`` rooms, ``BENCH_SUBSCRIBERS`` WebSocket subscribers per room in one asyncio process
(tests/benchmarks/bench_subscribers.py) spread over 2 uvicorn processes, ``BENCH_RATE`` saves per
second round-robin over the rooms for ``BENCH_SECONDS`` seconds after one second of warm-up saves.

turbo_async: one Celery worker process (``--pool solo``); the time of a save is taken by an
``on_commit`` callback registered before it, so it runs right after the commit, before
turbo_async's outbox publishes. turbo_django: no worker (it renders and sends inside ``save()``,
before the commit), so the time is taken just before ``create()`` is called. raw, the baseline: no
worker and no streams app; a second ``on_commit`` callback renders the same template and
``PUBLISH``es the frame to Redis from the saving process, and the web processes serve the
hand-written fan-out of raw_asgi.py (one Redis pub/sub reader per process, one ``websocket.send``
per socket per frame): the floor of this machine's Redis, uvicorn and ``websockets``. Every frame carries
``seq-N``; the subscriber process notes when each copy arrives. Nothing timed is asserted: the
result reports the frames delivered against those expected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.common import ROOT, percentile, setup_django, write_result

RATE = int(os.environ.get("BENCH_RATE", "50"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROOMS = int(os.environ.get("BENCH_ROOMS", "10"))
PER_ROOM = int(os.environ.get("BENCH_SUBSCRIBERS", "20"))
WEBS = int(os.environ.get("BENCH_WEBS", "2"))
SUBSCRIBER_PROCESSES = int(os.environ.get("BENCH_SUBSCRIBER_PROCESSES", "1"))
"""Processes the subscribers are spread over (bench_subscribers.py, one asyncio loop each): one
loop reading 20,000 messages a second is the first thing to saturate (the 10,000-subscriber room)."""
# turbo-django's consumer never leaves its groups and may send to a socket that the subscriber
# process has closed at the end of a run: those tracebacks are not errors of the run.
SEND_AFTER_CLOSE = "Unexpected ASGI message 'websocket.send', after sending 'websocket.close'"


def unexpected_errors(log: str) -> bool:
    return log.count("Traceback") > log.count(SEND_AFTER_CLOSE)


def raw_publisher() -> Callable[[Any], None]:
    """The raw variant's saving side: render the frame of a new message and ``PUBLISH`` it to the
    web processes (raw_asgi.py), in the saving process, right after the commit."""
    import redis
    from django.conf import settings
    from django.template.loader import render_to_string

    client = redis.Redis.from_url(settings.REDIS_URL)

    def publish(message: Any) -> None:
        html = render_to_string("chat/message.html", {"message": message})
        frame = f'<turbo-stream action="append" target="messages"><template>{html}</template></turbo-stream>'
        client.publish(f"raw:{message.room_id}", frame)

    return publish


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(web: Any, worker: Any) -> list[subprocess.Popen[bytes]]:
    """``BENCH_PROFILE=PREFIX``: py-spy records the first web process (PREFIX-web.svg) and the
    worker (PREFIX-worker.svg) while the saves run (docs/benchmarks.rst's flame graphs)."""
    prefix = os.environ.get("BENCH_PROFILE")
    if not prefix:
        return []
    spy = Path(sys.executable).with_name("py-spy")
    return [
        subprocess.Popen([str(spy), "record", "-p", str(process.process.pid), "-o", f"{prefix}-{name}.svg",
                          "-r", "50", "--nonblocking"])
        for name, process in (("web", web), ("worker", worker)) if process is not None
    ]


def main() -> None:
    setup_django()
    from django.apps import apps
    from django.conf import settings
    from django.db import transaction

    from tests.services import CeleryWorker, Uvicorn, subprocess_env

    variant = settings.VARIANT
    ours = variant == "turbo_async"
    raw = variant == "raw"
    Room = apps.get_model("chat", "Room")  # turbochat has demo.chat's label
    Message = apps.get_model("chat", "Message")
    if ours:
        from turbo_async import suppress

        with suppress():
            rooms = [Room.objects.create(name=f"latency {i}") for i in range(ROOMS)]
    else:
        rooms = [Room.objects.create(name=f"latency {i}") for i in range(ROOMS)]
    # A whole number of rounds over the rooms, so that every room gets as many saves.
    warmup = max(1, RATE // ROOMS) * ROOMS
    saves = max(1, RATE * SECONDS // ROOMS) * ROOMS
    total = warmup + saves
    clients = ROOMS * PER_ROOM
    logs = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    worker = CeleryWorker(logs, name="latency-worker", concurrency=1, pool="solo") if ours else None
    app = "tests.benchmarks.raw_asgi:application" if raw else "tests.benchmarks.asgi:application"
    webs = [Uvicorn(logs, name=f"web-{i}", app=app) for i in range(WEBS)]
    names = [str(r.pk) if raw else r.stream.signed_stream_name for r in rooms]
    publish = raw_publisher() if raw else None
    subscribers: list[subprocess.Popen[str]] | None = None
    began = time.monotonic()
    try:
        if worker is not None:
            worker.start()
        for web in webs:
            web.start()
        shares = [clients // SUBSCRIBER_PROCESSES + (i < clients % SUBSCRIBER_PROCESSES)
                  for i in range(SUBSCRIBER_PROCESSES)]
        outs = [logs / f"arrivals{i}.json" for i in range(SUBSCRIBER_PROCESSES)]
        subscribers = [
            subprocess.Popen(
                [
                    sys.executable, "-m", "tests.benchmarks.bench_subscribers", str(out), str(share),
                    str(warmup), str(saves // ROOMS), "turbo_django" if variant == "turbo_django" else "turbo_async",
                    "|".join(names),
                    *(f"{w.ws_url},{w.origin}" for w in webs[i % WEBS:] + webs[:i % WEBS]),
                ],
                cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
            )
            for i, (out, share) in enumerate(zip(outs, shares, strict=True))
        ]
        for process in subscribers:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the subscribers did not connect:\n{''.join(w.log() for w in webs)}")
        connected = time.monotonic() - began
        profilers = profile(webs[0], worker)
        # The web processes' CPU from here on: the frames' fan-out, without the connections.
        cpu_before = sum(cpu_seconds(w.process.pid) for w in webs if w.process is not None)
        committed: dict[int, float] = {}
        start = time.perf_counter()
        for seq in range(total):
            # a fixed rate: the n-th save is due at start + n / RATE
            delay = start + seq / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with transaction.atomic():
                if ours or raw:
                    transaction.on_commit(lambda seq=seq: committed.__setitem__(seq, time.time()))
                else:
                    committed[seq] = time.time()
                message = Message.objects.create(room=rooms[seq % ROOMS], text=f"seq-{seq}")
                if publish is not None:
                    transaction.on_commit(lambda message=message: publish(message))
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its flame graph
            profiler.wait(60)
        for process in subscribers:
            process.wait(90 + SECONDS)
        reads = [json.loads(out.read_text()) for out in outs]
        arrivals = [arrival for read in reads for arrival in read["arrivals"]]
        errors = [w.log() for w in webs if unexpected_errors(w.log())]
        # CPU seconds the web processes spent in all (less moved by other load than the p99).
        web_cpu = sum(cpu_seconds(w.process.pid) for w in webs if w.process is not None)
        saves_cpu = web_cpu - cpu_before
        if worker is not None and "Traceback" in worker.log():
            errors.append(worker.log())
    finally:
        for process in subscribers or []:
            if process.poll() is None:
                process.kill()
        for web in webs:
            web.stop()
        if worker is not None:
            worker.stop()
    if errors:
        raise RuntimeError("a server logged an error:\n" + "\n".join(e[-3000:] for e in errors))
    latencies = [(arrived - committed[seq]) * 1000 for seq, arrived, _server in arrivals if seq >= warmup]
    nothing = [float("nan")]
    write_result(
        {
            "variant": variant,
            "layer": settings.LAYER,
            "p50_ms": percentile(latencies or nothing, 50),
            "p95_ms": percentile(latencies or nothing, 95),
            "p99_ms": percentile(latencies or nothing, 99),
            "max_ms": max(latencies or nothing),
            "frames": len(latencies),
            "frames_expected": saves * PER_ROOM,
            "rooms": ROOMS,
            "subscribers": PER_ROOM,
            "rate": RATE,
            "connect_s": connected,
            "out_of_order": sum(read["out_of_order"] for read in reads),
            "sockets_complete": sum(read["complete"] for read in reads),
            "sockets": sum(read["sockets"] for read in reads),
            "webs": WEBS,
            "web_cpu_us_per_frame": web_cpu / max(1, len(arrivals)) * 1e6,
            # per frame written to a socket while the saves ran (warm-up included on both sides)
            "web_cpu_us_per_frame_sent": saves_cpu / max(1, len(arrivals)) * 1e6,
        }
    )


if __name__ == "__main__":
    main()
