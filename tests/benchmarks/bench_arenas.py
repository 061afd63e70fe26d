"""What a web process keeps after a burst of sockets closes, per memory allocator (docs/security.rst,
"Memory after a mass close").

    python -m tests.benchmarks.bench_arenas

Starts its own Redis and, per allocator, one uvicorn process serving
tests/benchmarks/arenas_asgi.py (tests/asgi.py's application with ``GET /_arenas``, which runs
``gc.collect()``, optionally ``malloc_trim(0)``, and reads ``sys._debugmallocstats()`` in the
process). Each process takes one round of ``BENCH_ARENAS_SOCKETS`` (500) sockets x
``BENCH_ARENAS_SUBSCRIPTIONS`` (100) subscriptions (tests/benchmarks/bench_abuse.py's ``mass``),
all closed, and the table shows uvicorn's RSS at its start, at the peak, ``BENCH_ARENAS_SETTLE``
(12) s after the close, and after ``gc.collect()`` and ``malloc_trim(0)``; the objects the collector
tracks before the round and after it, and those in reference cycles it freed; with pymalloc, its
arenas (1 MiB each) and the bytes of live small objects before the round and after the collection.

Allocators (``BENCH_ARENAS_ALLOCATORS``, comma-separated): ``default`` (pymalloc and glibc),
``malloc`` (``PYTHONMALLOC=malloc``: glibc for every object), ``jemalloc`` (``PYTHONMALLOC=malloc``
with jemalloc preloaded; skipped, and said so, when libjemalloc.so.2 is not installed). Nothing is
asserted: tests/integration/test_abuse.py holds the promise that closed sockets leave nothing
behind in Redis or in the layer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_abuse import mass, print_rows, stack_for_test_settings  # noqa: E402
from tests.services import rss_mb  # noqa: E402

SOCKETS = int(os.environ.get("BENCH_ARENAS_SOCKETS", "500"))
SUBSCRIPTIONS = int(os.environ.get("BENCH_ARENAS_SUBSCRIPTIONS", "100"))
SETTLE = float(os.environ.get("BENCH_ARENAS_SETTLE", "12"))
ALLOCATORS = os.environ.get("BENCH_ARENAS_ALLOCATORS", "default,malloc,jemalloc").split(",")
LAYER = os.environ.get("BENCH_ARENAS_LAYER", "pubsub")
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")

ENVIRONMENTS: dict[str, dict[str, str]] = {
    "default": {},
    "malloc": {"PYTHONMALLOC": "malloc"},
    "jemalloc": {"PYTHONMALLOC": "malloc", "LD_PRELOAD": str(JEMALLOC)},
}
LABELS = {
    "default": "default (pymalloc and glibc)",
    "malloc": "PYTHONMALLOC=malloc (glibc for every object)",
    "jemalloc": "PYTHONMALLOC=malloc with jemalloc (LD_PRELOAD)",
}


def arenas(port: int, trim: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/_arenas{'?trim=1' if trim else ''}"
    with urllib.request.urlopen(url, timeout=60) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def pymalloc(stats: dict[str, Any]) -> str:
    if not stats["pymalloc"]:
        return "(not pymalloc)"
    return f"{stats['arenas']} arenas, {stats['allocated_bytes'] / 1e6:.1f} MB live"


def one_round(allocator: str, tmp: Path) -> tuple[str, str] | None:
    from tests.services import Uvicorn
    from tests.testapp.streams import RoomStream

    if allocator not in ENVIRONMENTS:
        raise SystemExit(f"BENCH_ARENAS_ALLOCATORS: unknown allocator {allocator!r}; use {', '.join(ENVIRONMENTS)}")
    if allocator == "jemalloc" and not JEMALLOC.exists():
        print(f"jemalloc: skipped, {JEMALLOC} is not installed (apt install libjemalloc2)")
        return None
    web = Uvicorn(
        tmp / "logs", name=f"web-arenas-{allocator}", app="tests.benchmarks.arenas_asgi:application",
        TURBO_TEST_LAYER=LAYER, **ENVIRONMENTS[allocator],
    )
    web.start()
    assert web.process is not None
    pid = web.process.pid
    try:
        names = [RoomStream(n).signed_stream_name for n in range(SUBSCRIPTIONS)]
        before = arenas(web.port, trim=False)  # the process's first request: Django's lazy set-up done
        start = rss_mb(pid)
        outcome = asyncio.run(mass(web.ws_url, web.origin, names, pid, sockets=SOCKETS))
        time.sleep(SETTLE)
        settled = rss_mb(pid)
        after = arenas(web.port, trim=True)
        trimmed = rss_mb(pid)
    finally:
        web.stop()
    errors = sum(count for reply, count in outcome["replies"].items() if reply != "subscribed")
    print(
        f"{allocator}: subscribed in {outcome['subscribe_seconds']:.1f} s, {errors} other replies; "
        f"pymalloc before the round: {pymalloc(before)}; after it, collected: {pymalloc(after)}; "
        f"objects tracked by the collector before / after: {before['objects']:,} / {after['objects']:,} "
        f"(the collection after the round freed {after['collected']:,} in reference cycles)",
        flush=True,
    )
    return (
        LABELS[allocator],
        f"{start:.0f} / {outcome['rss_peak']:.0f} / {settled:.0f} / {trimmed:.0f}",
    )


def main() -> None:
    tmp, redis = stack_for_test_settings("bench_arenas_")
    rows: list[tuple[str, str]] = []
    try:
        for allocator in ALLOCATORS:
            row = one_round(allocator, tmp)
            if row is not None:
                rows.append(row)
    finally:
        redis.stop()
    print(f"\n{SOCKETS} sockets x {SUBSCRIPTIONS} subscriptions ({LAYER} layer), all closed; uvicorn's RSS in MB:")
    print(f"start / peak / {SETTLE:.0f} s after the close / after gc.collect() and malloc_trim(0)\n")
    print_rows(rows)


if __name__ == "__main__":
    main()
