"""The soak's writer: creates, updates and deletes messages at a steady rate through the ORM, on the
soak's PostgreSQL database, in a process of its own (as a web application's requests would), so
every change goes through the signals, the outbox and the broker to the workers.

``python -m tests.soak.writer STATUS_PATH RATE ROOM_PK...`` writes until SIGTERM, then flushes its
outbox; every second it writes a JSON status to ``STATUS_PATH``: changes made by kind and the
outbox's backlog (committed changes not yet published).

A room keeps at most ``MAX_PER_ROOM`` messages (a create on a full room deletes instead), so the
database, the pages and the histories stay the same size however long the soak runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

MAX_PER_ROOM = 30
WEIGHTS = {"create": 0.4, "update": 0.35, "delete": 0.25}


def main() -> None:
    import django

    django.setup()
    from tests.testapp.models import Message
    from turbo_async import outbox

    status_path, rate, rooms = Path(sys.argv[1]), float(sys.argv[2]), [int(pk) for pk in sys.argv[3:]]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    counts = {"create": 0, "update": 0, "delete": 0, "failed": 0}
    ids: dict[int, list[int]] = {room: list(Message.objects.filter(room_id=room).values_list("pk", flat=True))
                                  for room in rooms}
    started = time.monotonic()
    reported = 0.0
    n = 0
    while not stopping:
        room = random.choice(rooms)
        kind = random.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        if kind == "create" and len(ids[room]) >= MAX_PER_ROOM:
            kind = "delete"
        if kind != "create" and not ids[room]:
            kind = "create"
        try:
            if kind == "create":
                ids[room].append(Message.objects.create(room_id=room, text=f"soak {n}").pk)
            elif kind == "update":
                message = Message.objects.get(pk=random.choice(ids[room]))
                message.text = f"edited {n}"
                message.save(update_fields=["text"])  # a view's save(): post_save, one change
            else:
                pk = ids[room].pop(random.randrange(len(ids[room])))
                Message.objects.get(pk=pk).delete()
            counts[kind] += 1
        except Exception as exc:  # reported, the soak counts them; the writer goes on
            counts["failed"] += 1
            print(f"writer: {kind} failed: {exc!r}", file=sys.stderr, flush=True)
        n += 1
        now = time.monotonic()
        if now - reported >= 1:
            reported = now
            write_status(status_path, counts, len(outbox._outbox.waiting()), now - started, done=False)
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
    flushed = outbox.flush(timeout=30)
    write_status(status_path, counts, len(outbox._outbox.waiting()), time.monotonic() - started, done=flushed)


def write_status(path: Path, counts: dict[str, int], waiting: int, seconds: float, done: bool) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({**counts, "outbox": waiting, "seconds": round(seconds, 1), "done": done}))
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
