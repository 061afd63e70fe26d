"""Abuse benchmark: one flooding client, and thousands of sockets subscribing and closing at once.

    python -m tests.benchmarks.bench_abuse

Starts its own Redis and one uvicorn process (tests.asgi, the Redis channel layer, ``--ws-max-size``
20000 as docs/deployment.rst advises) and prints a table; nothing is asserted (the promises are in
tests/integration/test_abuse.py). Environment: ``BENCH_ABUSE_FLOOD_SECONDS`` (10),
``BENCH_ABUSE_SOCKETS`` (2000), ``BENCH_ABUSE_SUBSCRIPTIONS`` (100).

- victim: one client subscribes and unsubscribes (5 round trips a second) without and then during
  a flood of 16 KB forged subscriptions from another process, which reconnects each time it is
  closed (the worst an attacker without a proxy limit can do); p50 / p95 of the round trip;
- log lines uvicorn wrote during the flood, and the messages and connections the flood made;
- mass close: N sockets x M subscriptions, all closed; "internal error" replies, ASGI exceptions,
  group members left in Redis 10 s later, uvicorn's RSS before, at the peak and after.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import rss_mb  # noqa: E402

FLOOD_SECONDS = float(os.environ.get("BENCH_ABUSE_FLOOD_SECONDS", "10"))
SOCKETS = int(os.environ.get("BENCH_ABUSE_SOCKETS", "2000"))
SUBSCRIPTIONS = int(os.environ.get("BENCH_ABUSE_SUBSCRIPTIONS", "100"))
LAYER = os.environ.get("BENCH_ABUSE_LAYER", "pubsub")
SEND_TIMEOUT = 0.05
"""Seconds the flooding client's send may block before it gives the connection up."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def flood(url: str, origin: str, seconds: float, result: Any) -> None:
    """Another process: 16 KB forged subscriptions as fast as possible, reconnecting as soon as
    the server closes the socket or stops reading it.

    Raw frames over a blocking socket whose sends time out after ``SEND_TIMEOUT`` (a WebSocket
    library's client waits for its close handshake while its own send is blocked by a server that
    stopped reading, and so never reconnected: one connection for the whole flood). Counts the
    connections, the close frames with 1008 read back, and the connections that ended otherwise
    (reset, or a send that timed out: the close frame was lost behind the junk)."""
    import socket
    from urllib.parse import urlsplit

    from tests.benchmarks.bench_subscribers import TEXT, client_frame, handshake

    parts = urlsplit(url)
    frame = client_frame(TEXT, json.dumps({"type": "subscribe", "signed_channel_name": "x" * 16000}).encode())
    sent = connections = closed_1008 = ended_otherwise = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=SEND_TIMEOUT)
        except OSError:
            time.sleep(0.01)
            continue
        try:
            sock.sendall(handshake(url, origin))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError("handshake refused")
            connections += 1
            incoming = head.split(b"\r\n\r\n", 1)[1]
            while time.monotonic() < deadline:
                sock.sendall(frame)
                sent += 1
                if sent % 20 == 0:  # read what came back, to notice a close and reconnect
                    sock.setblocking(False)
                    try:
                        while chunk := sock.recv(1 << 16):
                            incoming += chunk
                    except BlockingIOError:
                        pass
                    finally:
                        sock.settimeout(SEND_TIMEOUT)
                    code, read = close_code(incoming)
                    incoming = incoming[read:]
                    if code is not None:
                        closed_1008 += code == 1008
                        break
                    if not chunk:
                        raise ConnectionError("closed")
        except (OSError, ConnectionError):
            ended_otherwise += 1
        finally:
            sock.close()
    result.put({
        "sent": sent, "connections": connections, "closed_1008": closed_1008,
        "ended_otherwise": ended_otherwise,
    })


def close_code(data: bytes) -> tuple[int | None, int]:
    """The code of the first close frame among the server's frames in ``data``, if one is there
    whole, and how many bytes of whole frames came before it (or were read)."""
    from tests.benchmarks.bench_subscribers import CLOSE, frame_at

    at = 0
    while (found := frame_at(data, at)) is not None:
        first, start, end = found
        if first & 0x0F == CLOSE:
            return (int.from_bytes(data[start : start + 2], "big") if end - start >= 2 else 1005), at
        at = end
    return None, at


async def victim(url: str, origin: str, names: list[str], seconds: float) -> list[float]:
    from websockets.asyncio.client import connect

    times: list[float] = []
    async with connect(url, origin=origin, open_timeout=30) as ws:  # type: ignore[arg-type]
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            name = names[n % len(names)]
            n += 1
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": name}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
            times.append(time.perf_counter() - start)
            assert reply.get("type") == "subscribed", reply
            await ws.send(json.dumps({"type": "unsubscribe", "signed_channel_name": name}))
            await asyncio.sleep(0.2)
    return times


async def mass(url: str, origin: str, names: list[str], pid: int, sockets: int = SOCKETS) -> dict[str, Any]:
    """``sockets`` sockets each subscribe to every one of ``names``, then all close."""
    from websockets.asyncio.client import connect

    replies: dict[str, int] = {}
    opened = []
    start = time.monotonic()
    for batch in range(0, sockets, 100):
        opened += await asyncio.gather(
            *(connect(url, origin=origin, open_timeout=120, ping_interval=None) for _ in range(batch, min(sockets, batch + 100)))  # type: ignore[arg-type]
        )

    async def subscribe_all(ws: Any) -> None:
        for name in names:
            await ws.send(json.dumps({"type": "subscribe", "signed_channel_name": name}))
        answered = 0
        while answered < len(names):
            reply = json.loads(await asyncio.wait_for(ws.recv(), 600))
            if reply.get("type") == "ping":  # the server's heartbeat, not an answer
                continue
            answered += 1
            key = reply.get("type") if reply.get("type") == "subscribed" else reply.get("error", "?")
            replies[key] = replies.get(key, 0) + 1

    await asyncio.gather(*(subscribe_all(ws) for ws in opened))
    subscribed_after = time.monotonic() - start
    peak = rss_mb(pid)
    await asyncio.gather(*(ws.close() for ws in opened))
    return {"replies": replies, "subscribe_seconds": subscribed_after, "rss_peak": peak}


def stack_for_test_settings(prefix: str) -> tuple[Path, Any]:
    """A temporary directory and a started Redis for processes of tests.settings (which this
    process is set up with too): what bench_abuse and bench_cycles start from."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    from tests.services import RedisServer, free_port

    os.environ["TURBO_TEST_REDIS_PORT"] = str(free_port())
    os.environ["TURBO_TEST_TMP"] = tmp
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    redis = RedisServer(int(os.environ["TURBO_TEST_REDIS_PORT"]), Path(tmp) / "redis")
    redis.start()
    return Path(tmp), redis


def print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


def main() -> None:
    tmp, redis = stack_for_test_settings("bench_abuse_")
    from tests.services import Uvicorn
    from tests.testapp.streams import RoomStream

    web = Uvicorn(tmp / "logs", name="web-bench-abuse", TURBO_TEST_LAYER=LAYER)
    web.args += ["--ws-max-size", "20000", *os.environ.get("BENCH_ABUSE_UVICORN_ARGS", "").split()]
    web.start()
    assert web.process is not None
    pid = web.process.pid
    rows: list[tuple[str, str]] = []
    try:
        names = [RoomStream(n).signed_stream_name for n in range(max(SUBSCRIPTIONS, 50))]
        quiet = asyncio.run(victim(web.ws_url, web.origin, names, FLOOD_SECONDS))
        lines_before = len(web.log().splitlines())
        cpu_before = cpu_seconds(pid)
        result: Any = multiprocessing.get_context("spawn").Queue()
        attacker = multiprocessing.get_context("spawn").Process(
            target=flood, args=(web.ws_url, web.origin, FLOOD_SECONDS, result)
        )
        attacker.start()
        time.sleep(0.5)  # the flood is under way
        loud = asyncio.run(victim(web.ws_url, web.origin, names, FLOOD_SECONDS - 1))
        flooded = result.get(timeout=60)
        attacker.join(10)
        cpu_flood = cpu_seconds(pid) - cpu_before
        time.sleep(0.5)
        lines = len(web.log().splitlines()) - lines_before
        p50q, p95q = percentile(quiet, 50) * 1000, percentile(quiet, 95) * 1000
        p50l, p95l = percentile(loud, 50) * 1000, percentile(loud, 95) * 1000
        rows += [
            ("victim subscribe round trip, no flood: p50 / p95", f"{p50q:.1f} / {p95q:.1f} ms ({len(quiet)} round trips)"),
            ("victim subscribe round trip, during flood: p50 / p95", f"{p50l:.1f} / {p95l:.1f} ms ({len(loud)} round trips)"),
            ("ratio flood / no flood (p95)", f"{p95l / p95q:.1f}x"),
            ("flood: 16 KB messages sent / connections / closed 1008 / ended otherwise",
             f"{flooded['sent']} / {flooded['connections']} / {flooded['closed_1008']} / {flooded['ended_otherwise']}"),
            ("flood: uvicorn CPU / log lines written", f"{cpu_flood:.1f} s / {lines}"),
        ]

        redis.flushall()
        rss_before = rss_mb(pid)
        client = redis.client()
        # Two identical rounds: the first grows the allocator's arenas, the second shows what is
        # kept per socket (a leak grows RSS again by as much; a warm allocator reuses its memory).
        for round_ in (1, 2):
            log_before = len(web.log())
            start = time.monotonic()
            outcome = asyncio.run(mass(web.ws_url, web.origin, names[:SUBSCRIPTIONS], pid))
            closed_at = time.monotonic()
            time.sleep(10)
            left = sum(client.zcard(key) for key in client.scan_iter("asgi:group:*"))
            subscribed = len(client.pubsub_channels())  # pubsub: the web process's own SUBSCRIBEs
            while (client.pubsub_channels() or any(client.scan_iter("asgi:group:*"))) and time.monotonic() - closed_at < 120:
                time.sleep(0.5)
            emptied = time.monotonic() - closed_at
            time.sleep(5)
            rss_after = rss_mb(pid)
            log = web.log()[log_before:]
            replies = outcome["replies"]
            rows += [
                (f"mass #{round_}: {SOCKETS} sockets x {SUBSCRIPTIONS} subscriptions ({LAYER}), subscribed in",
                 f"{outcome['subscribe_seconds']:.1f} s (all closed at {closed_at - start:.1f} s)"),
                (f"mass #{round_}: replies", ", ".join(f"{k}: {v}" for k, v in sorted(replies.items()))),
                (f"mass #{round_}: 'internal error' replies / 'Exception in ASGI application'",
                 f"{sum(v for k, v in replies.items() if 'internal error' in k)} / {log.count('Exception in ASGI application')}"),
                (f"mass #{round_}: group members / pub/sub channels left in Redis 10 s after the close",
                 f"{left} / {subscribed} (none left {emptied:.1f} s after the close)"),
                (f"mass #{round_}: uvicorn RSS before / peak / 15 s after the close",
                 f"{rss_before:.0f} / {outcome['rss_peak']:.0f} / {rss_after:.0f} MB"),
            ]
            rss_before = rss_after
    finally:
        web.stop()
        redis.stop()
    print_rows(rows)


if __name__ == "__main__":
    main()
