"""What turbo_async's metrics add per call, metrics on against off, in one process (run by run.py;
``python -m tests.benchmarks.bench_metrics_calls`` alone):

- ``metrics.frame_sent``, the web process's one call per frame and socket, 300,000 calls;
- the worker's Celery task signals (``task_prerun`` / ``task_postrun``) around a batch of 100
  changes, 2,000 batches, per change.

The call is timed with ``timeit``, median of 5 repeats; ``time.time()`` is in both figures of
``frame_sent`` (as its caller passes a commit time). Nothing but the calls runs: no sockets, no
Celery.
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from typing import Any

from tests.benchmarks.common import setup_django, write_result

FRAME_CALLS = 300_000
BATCHES = 2_000
BATCH = 100


def main() -> None:
    setup_django(migrate=False)
    from django.test.utils import override_settings

    from turbo_async import metrics
    from turbo_async.changes import BATCH_TASK

    class Request:
        def get(self, key: str, default: Any = None) -> Any:
            return time.time()

    class Task:
        name = BATCH_TASK
        request = Request()

    items = [{"label": "chat.message", "pk": pk, "event": "save", "created": True} for pk in range(BATCH)]

    def frame() -> None:
        metrics.frame_sent(300, time.time())

    def batch() -> None:
        metrics._task_started(task=Task(), args=(items,))
        metrics._task_ended(task=Task())

    def measure() -> dict[str, float]:
        return {
            "frame_us": statistics.median(timeit.repeat(frame, number=FRAME_CALLS, repeat=5)) / FRAME_CALLS * 1e6,
            "change_us": statistics.median(timeit.repeat(batch, number=BATCHES, repeat=5)) / BATCHES / BATCH * 1e6,
        }

    off = measure()
    with override_settings(TURBO_ASYNC={"METRICS": True, "STATUS_INTERVAL": 0}):
        metrics.active()
        on = measure()
    write_result({f"{key}_{state}": value for state, figures in (("off", off), ("on", on)) for key, value in figures.items()})


if __name__ == "__main__":
    sys.exit(main())
