"""What turbo_async's metrics add per call, metrics on against off, in one process (run by run.py;
``python -m tests.benchmarks.bench_metrics_calls`` alone):

- ``metrics.frame_sent``, the web process's one call per frame and socket, 2,000 calls a turn;
- the worker's Celery task signals (``task_prerun`` / ``task_postrun``) around a batch of 100
  changes, 20 batches a turn, per change.

Each is timed with ``timeit``, off and on taking turns, 101 turns each, the minimum of each kept:
turns of about a millisecond, so that some run while no other process takes the CPU even on a
loaded machine (turns of 60,000 calls came out up to three times slower there). ``time.time()``
is in both figures of ``frame_sent`` (as its caller passes a commit time). Nothing but the calls
runs: no sockets, no Celery.
"""

from __future__ import annotations

import sys
import time
import timeit
from typing import Any

from tests.benchmarks.common import setup_django, write_result

FRAME_CALLS = 2_000
BATCHES = 20
BATCH = 100
REPEATS = 101


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
            "frame_us": timeit.timeit(frame, number=FRAME_CALLS) / FRAME_CALLS * 1e6,
            "change_us": timeit.timeit(batch, number=BATCHES) / BATCHES / BATCH * 1e6,
        }

    # Off and on take turns, REPEATS times each, so that other load on the machine falls on both;
    # the minimum of each is its figure (other processes can only add to a timing).
    on_settings = override_settings(TURBO_ASYNC={"METRICS": True, "STATUS_INTERVAL": 0})
    timings: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(REPEATS):
        timings["off"].append(measure())
        with on_settings:
            metrics.active()
            timings["on"].append(measure())
        metrics.active()
    write_result({
        f"{key}_{state}": min(figures[key] for figures in timings[state])
        for state in ("off", "on") for key in ("frame_us", "change_us")
    })

if __name__ == "__main__":
    sys.exit(main())
