"""The worker service's Celery app (workers/celery.py) plus a progress mark every
``BENCH_MARK_EVERY`` changes: ``(changes done, perf_counter, RSS in kB, process CPU seconds)`` pushed to the Redis list
``bench:marks`` by the pool process that ran the task. A ``turbo_async.batch`` task counts the
changes it carried, any other task one. One push per mark, so the cost per task is a counter
increment.

    celery -A tests.benchmarks.worker worker --concurrency 1
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery.signals import task_postrun

from tests.benchmarks.common import rss_kb
from turbo_async.changes import BATCH_TASK
from workers.celery import app

__all__ = ["app"]

MARK_EVERY = int(os.environ.get("BENCH_MARK_EVERY", "500"))
# BENCH_EVENTS=0: no task events (what Flower reads), to show what they cost.
app.conf.worker_send_task_events = os.environ.get("BENCH_EVENTS", "1") == "1"
_done = 0
_redis: Any = None


@task_postrun.connect
def mark(sender: Any = None, args: Any = None, **kwargs: Any) -> None:
    global _done, _redis
    before = _done
    _done += len(args[0]) if sender is not None and sender.name == BATCH_TASK and args else 1
    if _done // MARK_EVERY == before // MARK_EVERY:
        return
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _redis.rpush("bench:marks", json.dumps([_done, time.perf_counter(), rss_kb(), time.process_time()]))
