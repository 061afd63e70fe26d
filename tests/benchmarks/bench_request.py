"""The request side of one variant: ``Message.objects.create()``, a 100-message transaction,
and loading 10,000 rows. Run by run.py in its own process, one per variant.

    BENCH_VARIANT=turbo_async python -m tests.benchmarks.bench_request [--suppress]

``BENCH_DATABASE`` and ``BENCH_OUTBOX`` choose the database and turbo_async's outbox (settings.py);
``BENCH_LOADS=0`` skips the loading of rows. Nothing timed is asserted: the figures are printed.
The only assertions check that the variant is the one meant (the database outbox wrote its rows in
the saving transaction and deleted them once published; the memory outbox wrote none).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from typing import Any

from tests.benchmarks.common import median_ms, setup_django, write_result

PACED = 300
CREATES = int(os.environ.get("BENCH_CREATES", "500"))
WARMUP = 50
TRANSACTIONS = 20
ROWS = 10_000
LOADS = int(os.environ.get("BENCH_LOADS", "41"))


def main() -> None:
    suppressed = "--suppress" in sys.argv
    setup_django()
    import redis
    from django.apps import apps
    from django.conf import settings
    from django.db import transaction

    variant = settings.VARIANT
    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    broker = redis.Redis.from_url(settings.REDIS_URL)

    sends = {"count": 0}
    if variant == "turbo_django":  # count its group_sends, the equivalent of our tasks
        from channels_redis.core import RedisChannelLayer

        original = RedisChannelLayer.group_send

        async def counted(self: Any, group: str, message: dict[str, Any]) -> None:
            sends["count"] += 1
            await original(self, group, message)

        RedisChannelLayer.group_send = counted  # type: ignore[method-assign]

    def drain() -> None:
        if variant == "turbo_async":  # the outbox thread publishes after commit: wait for it
            from turbo_async import outbox

            assert outbox.flush(timeout=60)

    def published() -> int:
        drain()
        if variant == "turbo_async":
            return int(broker.llen("celery"))  # no worker runs: every task stays in the queue
        return sends["count"]

    block: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if suppressed:
        from turbo_async import suppress

        block = suppress()

    room = Room.objects.create(name="bench")
    result: dict[str, Any] = {
        "variant": variant,
        "suppressed": suppressed,
        "database": settings.DATABASE,
        "outbox": settings.OUTBOX if variant == "turbo_async" else None,
    }

    def outbox_rows() -> int:
        if variant != "turbo_async":
            return 0
        return int(apps.get_model("turbo_async", "OutboxEntry")._base_manager.count())

    with block:
        # 1. one create() per autocommit transaction: save + commit + whatever the app adds
        for i in range(WARMUP):
            Message.objects.create(room=room, text=f"warm-up {i}")
        gc.collect()
        times = []
        for i in range(CREATES):
            start = time.perf_counter()
            Message.objects.create(room=room, text=f"message {i}")
            times.append(time.perf_counter() - start)
        result["create_ms"] = median_ms(times)

        # 1b. the same, paced at 100 saves/s as requests arrive: what one request waits for
        # (turbo_async's outbox publishes between them; back to back, it competes for the GIL)
        drain()
        paced = []
        for i in range(PACED):
            time.sleep(0.01)
            start = time.perf_counter()
            Message.objects.create(room=room, text=f"paced {i}")
            paced.append(time.perf_counter() - start)
        result["paced_create_ms"] = median_ms(paced)

        # 2. one transaction creating 100 messages; commit = leaving atomic() (on_commit work)
        totals, commits, drained, tasks = [], [], [], []
        for r in range(TRANSACTIONS):
            before = published()
            start = time.perf_counter()
            with transaction.atomic():
                for i in range(100):
                    Message.objects.create(room=room, text=f"batch {r} {i}")
                committing = time.perf_counter()
            end = time.perf_counter()
            drain()
            drained.append(time.perf_counter() - start)
            totals.append(end - start)
            commits.append(end - committing)
            tasks.append(published() - before)
        result["tx_ms"] = median_ms(totals)
        result["commit_ms"] = median_ms(commits)
        result["drained_ms"] = median_ms(drained)  # until every task is on the broker
        result["tasks_per_tx"] = max(tasks)

        # the same 100 messages created and then edited twice in one transaction
        before = published()
        with transaction.atomic():
            rows = [Message.objects.create(room=room, text=f"edit {i}") for i in range(100)]
            for edit in ("once", "twice"):
                for row in rows:
                    row.text = edit
                    row.save()
            # Not timed. The database outbox writes one row per save, in this transaction.
            result["outbox_rows_in_tx"] = outbox_rows()
        result["tasks_per_tx_with_edits"] = published() - before
        result["outbox_rows_left"] = outbox_rows()  # published, so deleted by the relay

    expected = 300 if result["outbox"] == "database" and not suppressed else 0
    if result["outbox_rows_in_tx"] != expected or result["outbox_rows_left"] != 0:
        raise RuntimeError(
            f"this is not the variant meant (OUTBOX={result['outbox']!r}, suppress={suppressed}): "
            f"{result['outbox_rows_in_tx']} outbox rows written by 300 saves (expected {expected}), "
            f"{result['outbox_rows_left']} left after publishing (expected 0); check tests/benchmarks/settings.py"
        )

    # 5. loading rows of the streamed model
    if not LOADS:
        result["load_ms"] = None
        write_result(result)
        return
    missing = ROWS - Message.objects.count()
    if missing > 0:  # bulk_create sends no post_save: nothing is broadcast
        Message.objects.bulk_create(
            [Message(room=room, text=f"row {i}") for i in range(missing)], batch_size=1000
        )
    loads = []
    for _ in range(LOADS):
        gc.collect()
        # As timeit does: the garbage collector off while timing. Its full collections scan every
        # object of the process, so they cost more in a process that imported more (Celery,
        # kombu), whatever the rows cost; that made the ratio wander by 5% between runs.
        gc.disable()
        start = time.perf_counter()
        loaded = list(Message.objects.all()[:ROWS])
        loads.append(time.perf_counter() - start)
        gc.enable()
        assert len(loaded) == ROWS
        del loaded
    result["load_ms"] = median_ms(loads)
    write_result(result)


if __name__ == "__main__":
    main()
