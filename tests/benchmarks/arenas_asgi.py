"""tests/asgi.py's application, plus ``GET /_arenas`` for tests/benchmarks/bench_arenas.py.

``/_arenas`` runs ``gc.collect()`` (and glibc's ``malloc_trim(0)`` with ``?trim=1``) in the web
process and answers, as JSON, the objects the collection freed and those it tracks after it, and
CPython's small-object allocator figures read from ``sys._debugmallocstats()``: arenas allocated
now, bytes in allocated (live) blocks, bytes in available blocks. Benchmark only: a real deployment must never expose this.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
from typing import Any

from tests.asgi import application as tests_application

FIELDS = {
    "arenas": "# arenas allocated current",
    "allocated_bytes": "# bytes in allocated blocks",
    "available_bytes": "# bytes in available blocks",
}


def allocator_stats(trim: bool) -> dict[str, Any]:
    collected = gc.collect()
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    # _debugmallocstats writes to the C stderr: point file descriptor 2 at a file for the call.
    with tempfile.TemporaryFile(mode="w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    stats: dict[str, Any] = {
        "pymalloc": "# arenas allocated current" in text,
        "collected": collected,  # objects in reference cycles the collection freed
        "objects": len(gc.get_objects()),  # objects the collector tracks, after it
    }
    for key, label in FIELDS.items():
        match = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        stats[key] = int(match.group(1).replace(",", "")) if match else None
    return stats


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/_arenas":
        body = json.dumps(allocator_stats(trim=b"trim=1" in scope.get("query_string", b""))).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await tests_application(scope, receive, send)
