"""Many sockets against one web process: a subscription avalanche, and the memory of idle sockets.
Run by run.py (``BENCH_ONLY=avalanche`` or ``memory``), one process per case and channel layer.

``BENCH_MODE=avalanche``: ``BENCH_SOCKETS`` WebSockets (default 2,000) open on one uvicorn process,
then all at once each sends ``BENCH_SUBSCRIPTIONS`` subscribes (default 100) in one write, as the
pages of a deploy or a Redis failover do when they come back. Half the names are of an open stream
(``RoomStream``: no permission question), half of a stream with its own ``user_passes_test``
(``MessageStream``: asked in Django's database thread), ``BENCH_STREAMS`` streams in all, so that
each stream has many pages, as a site's popular streams do. Reported: the time from the sends to
the last answer, subscriptions answered per second, each socket's time to its last answer (p50,
p99), answers that are not ``subscribed``, sockets the server closed (with their close codes: 1011
"keepalive ping timeout" is uvicorn's), and the server log's tracebacks.

``BENCH_MODE=memory``: ``BENCH_SOCKETS`` sockets (default 10,000) open and subscribe to 5 streams
each, at a modest pace, then stay idle (``BENCH_VARIANT=raw``: against the hand-written fan-out of
raw_asgi.py, the floor of uvicorn and ``websockets`` alone); the web process's RSS after a warm-up of
``MEMORY_WARMUP`` sockets (imports, caches, pools: what a process pays once) is compared with its
RSS once all are subscribed and idle: the difference over the sockets added is the cost of one.

The sockets are driven by ``BENCH_CLIENTS`` client processes (multiprocessing, default 4), each
with its own asyncio loop speaking just enough RFC 6455 (bench_subscribers.py's ``Socket``): one
client loop holding 2,000 sockets is the first thing to saturate on this machine (it then answers
the server's pings late, and uvicorn closes sockets with 1011, which would be the client's fault).
Nothing timed is asserted.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.benchmarks.bench_latency import cpu_seconds
from tests.benchmarks.bench_subscribers import CLOSE, Socket, client_frame, frame_at
from tests.benchmarks.common import percentile, rss_kb, setup_django, write_result

MODE = os.environ.get("BENCH_MODE", "avalanche")
SOCKETS = int(os.environ.get("BENCH_SOCKETS", "2000" if MODE == "avalanche" else "10000"))
SUBSCRIPTIONS = int(os.environ.get("BENCH_SUBSCRIPTIONS", "100" if MODE == "avalanche" else "5"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "1000"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
DEADLINE = float(os.environ.get("BENCH_DEADLINE", "120"))
"""Seconds the clients wait for every answer before giving up (the goal is 60)."""
MEMORY_WARMUP = 200
CONNECT_AT_ONCE = 100


errors: Counter[str] = Counter()
"""The texts of the error answers this client process got, and how many of each."""


class Counting(Socket):
    """A client socket that answers the server's pings from the moment it is open, counts the
    answers to its subscriptions and notes a close by the server."""

    wanted = -1  # answers expected: set when the subscribes are sent
    answered = 0
    refused = 0
    internal = 0
    closed: int | None = None
    done_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set or the server closes the socket."""
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while self.closed is None:
                read = asyncio.ensure_future(self.reader.read(1 << 20))
                await asyncio.wait([read, stopper], return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    return
                chunk = read.result()
                if not chunk:
                    self.closed = -1
                    return
                self.take(chunk)
        except ConnectionError:
            self.closed = -1
        finally:
            stopper.cancel()

    def take(self, chunk: bytes) -> None:
        self.buffer += chunk
        at = 0
        while (frame := frame_at(self.buffer, at)) is not None:
            first, start, end = frame
            at = end
            opcode = first & 0x0F
            payload = bytes(self.buffer[start:end])
            if opcode == 0x9:  # ping
                self.writer.write(client_frame(0xA, payload))
            elif opcode == CLOSE:
                self.closed = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            elif opcode == 0x1:
                kind = json.loads(payload).get("type")
                if kind in ("subscribed", "error"):
                    self.answered += 1
                if kind == "error":
                    self.refused += 1
                    self.internal += b"internal error" in payload
                    errors[json.loads(payload).get("error", "")[:120]] += 1
                if self.answered == self.wanted:
                    self.done_at = time.time()
        del self.buffer[:at]


async def client(
    index: int, url: str, origin: str, names: list[list[str]], connected: Any, go: Any, results: Any, hold: float,
) -> None:
    """One client process's sockets: connect them all (each answers pings from then on), wait
    for ``go`` (the same moment in every process), send each socket's subscribes in one write,
    count the answers, then keep the sockets open ``hold`` seconds longer (a close by the server
    is noted)."""
    stop = asyncio.Event()
    sockets: list[Counting] = []
    readers = []
    for start in range(0, len(names), CONNECT_AT_ONCE):
        batch = [Counting.connect(url, origin) for _ in names[start:start + CONNECT_AT_ONCE]]
        opened: list[Counting] = await asyncio.gather(*batch)  # type: ignore[arg-type]
        sockets += opened
        readers += [asyncio.ensure_future(ws.run(stop)) for ws in opened]
        if MODE == "memory":
            await asyncio.sleep(0.05)
    connected.release()
    loop = asyncio.get_running_loop()
    started = float(await loop.run_in_executor(None, go.get))
    for ws, mine in zip(sockets, names, strict=True):
        ws.wanted = len(mine)
        ws.writer.write(b"".join(
            client_frame(0x1, json.dumps({"type": "subscribe", "signed_channel_name": name}).encode())
            for name in mine
        ))
        if MODE == "memory":
            await asyncio.sleep(0.005)
    # Every socket answered (or closed), or the deadline: then all stay open ``hold`` seconds more.
    while time.time() < started + DEADLINE and any(ws.done_at is None and ws.closed is None for ws in sockets):
        await asyncio.sleep(0.2)
    await asyncio.sleep(hold)
    results.put({
        "answered": sum(ws.answered for ws in sockets),
        "refused": sum(ws.refused for ws in sockets),
        "internal": sum(ws.internal for ws in sockets),
        "errors": dict(errors),
        "closed": [ws.closed for ws in sockets if ws.closed is not None],
        "done": [ws.done_at - started for ws in sockets if ws.done_at is not None],
    })
    results.put("rss")  # the parent reads the server's RSS now, then says "close"
    await loop.run_in_executor(None, go.get)
    stop.set()
    await asyncio.wait(readers, timeout=30)
    for ws in sockets:
        ws.writer.write(client_frame(CLOSE, (1000).to_bytes(2, "big")))
        ws.writer.close()


def run_client(*args: Any) -> None:
    """A client process; an error is reported to the parent rather than leaving it waiting."""
    try:
        asyncio.run(client(*args))
    except Exception as exc:
        args[-2].put({"error": f"client {args[0]}: {exc!r}"})
        raise


def signed_names() -> list[str]:
    """``STREAMS`` signed names, one of two open ``RoomStream`` to one checked ``MessageStream``."""
    from django.apps import apps

    from turbo_async import suppress

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    with suppress():
        rooms = Room.objects.bulk_create([Room(name=f"avalanche {i}") for i in range(STREAMS // 2)])
        messages = Message.objects.bulk_create(
            [Message(room=rooms[i % len(rooms)], text=f"m{i}") for i in range(STREAMS - len(rooms))]
        )
    names = []
    for room, message in zip(rooms, messages, strict=False):
        names += [room.stream.signed_stream_name, Message.objects.get(pk=message.pk).stream.signed_stream_name]
    return names


def main() -> None:
    setup_django()
    from django.conf import settings

    from tests.services import Uvicorn

    raw = settings.VARIANT == "raw"
    pool = [str(i) for i in range(STREAMS)] if raw else signed_names()
    count = SOCKETS + (MEMORY_WARMUP if MODE == "memory" else 0)
    per_socket = [[pool[(i * SUBSCRIPTIONS + j) % len(pool)] for j in range(SUBSCRIPTIONS)] for i in range(count)]
    logs = Path(tempfile.mkdtemp(prefix="bench_sockets_"))
    app = "tests.benchmarks.raw_asgi:application" if raw else "tests.benchmarks.asgi:application"
    web = Uvicorn(logs, name="web", app=app)
    context = multiprocessing.get_context("spawn")
    os.environ.setdefault("BENCH_HANDSHAKE_TIMEOUT", "300")  # the clients': thousands of handshakes, a loaded machine
    processes = []
    try:
        web.start()
        assert web.process is not None
        rss_before = None
        hold = 25.0 if MODE == "avalanche" else 5.0  # beyond uvicorn's ping interval + timeout (20 s)
        if MODE == "memory":
            # The warm-up sockets: what a process pays once is paid before the measure.
            rss_before = warm_up(web, per_socket[:MEMORY_WARMUP])
            per_socket = per_socket[MEMORY_WARMUP:]
        connected, go, results = context.Semaphore(0), context.Queue(), context.Queue()
        shares = [per_socket[i::CLIENTS] for i in range(CLIENTS)]
        for index, share in enumerate(shares):
            process = context.Process(
                target=run_client, args=(index, web.ws_url, web.origin, share, connected, go, results, hold)
            )
            process.start()
            processes.append(process)
        began = time.monotonic()
        for _ in shares:
            if not connected.acquire(timeout=300):
                raise RuntimeError(f"the clients did not connect:\n{web.log()[-3000:]}")
        connect_s = time.monotonic() - began
        time.sleep(1)
        profiler = profile(web.process.pid)
        cpu_before = cpu_seconds(web.process.pid)
        started = time.time()
        for _ in shares:
            go.put(started)
        # Each client puts its report, then "rss" (it is holding its sockets open, idle).
        got = []
        while len(got) < 2 * len(shares) and not any("error" in item for item in got if isinstance(item, dict)):
            got.append(results.get(timeout=DEADLINE + hold + 60))
        reports = [item for item in got if item != "rss"]
        failed = [item["error"] for item in reports if "error" in item]
        if failed:
            raise RuntimeError(f"a client failed: {failed}")
        rss_after = rss_kb(web.process.pid)
        cpu = cpu_seconds(web.process.pid) - cpu_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        for _ in shares:
            go.put(0)
        for process in processes:
            process.join(30)
        log = web.log()
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        web.stop()
    done = [t for report in reports for t in report["done"]]
    closed = [code for report in reports for code in report["closed"]]
    total = sum(len(share) for share in per_socket) if MODE == "avalanche" else len(per_socket) * SUBSCRIPTIONS
    answered = sum(report["answered"] for report in reports)
    last = max(done) if done else float("nan")
    result: dict[str, Any] = {
        "mode": MODE,
        "variant": settings.VARIANT,
        "layer": settings.LAYER,
        "sockets": len(per_socket),
        "subscriptions": SUBSCRIPTIONS,
        "streams": len(pool),
        "clients": CLIENTS,
        "connect_s": connect_s,
        "expected": total,
        "answered": answered,
        "refused": sum(report["refused"] for report in reports),
        "internal": sum(report["internal"] for report in reports),
        "errors": dict(sum((Counter(report["errors"]) for report in reports), Counter())),
        "sockets_done": len(done),
        "all_answered_s": last if len(done) == len(per_socket) else None,
        "per_s": answered / last if done else 0.0,
        "web_cpu_s": cpu,
        "per_cpu_s": answered / cpu if cpu else 0.0,
        "socket_p50_s": percentile(done or [float("nan")], 50),
        "socket_p99_s": percentile(done or [float("nan")], 99),
        "closed": len(closed),
        "closed_codes": sorted(set(closed)),
        "keepalive_closes": log.count("keepalive ping timeout"),
        "tracebacks": log.count("Traceback"),
        "log_tail": log[-2000:] if "Traceback" in log else "",
    }
    if rss_before is not None:
        result.update(rss_before_kb=rss_before, rss_after_kb=rss_after,
                      kb_per_socket=(rss_after - rss_before) / max(1, len(per_socket)))
    write_result(result)


def profile(pid: int) -> subprocess.Popen[bytes] | None:
    """``BENCH_PROFILE=FILE``: py-spy records the web process from the burst on (an SVG flame
    graph, or a speedscope file if FILE ends in .json)."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return None
    fmt = "speedscope" if out.endswith(".json") else "flamegraph"
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-o", out, "-f", fmt, "-r", "50", "--nonblocking"])


def warm_up(web: Any, names: list[list[str]]) -> int:
    """Open and subscribe ``names``' sockets (kept open), and return the web process's RSS, KB."""
    import threading

    ready = threading.Event()
    rss: list[int] = []

    async def hold() -> None:
        sockets = [await Counting.connect(web.ws_url, web.origin) for _ in names]
        for ws, mine in zip(sockets, names, strict=True):
            for name in mine:
                ws.send_text(json.dumps({"type": "subscribe", "signed_channel_name": name}))
        stop = asyncio.Event()
        readers = [asyncio.ensure_future(ws.run(stop)) for ws in sockets]
        for ws, mine in zip(sockets, names, strict=True):
            ws.wanted = len(mine)
        while any(ws.done_at is None for ws in sockets):
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        rss.append(rss_kb(web.process.pid))
        ready.set()
        await asyncio.wait(readers)  # open until the process ends

    threading.Thread(target=lambda: asyncio.run(hold()), daemon=True).start()
    if not ready.wait(120):
        raise RuntimeError("the warm-up sockets did not subscribe")
    return rss[0]


if __name__ == "__main__":
    main()
