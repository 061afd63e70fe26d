"""Layer 1: Prometheus metrics of the web processes, the workers and the request side, and the
status each web process reports to Redis for ``manage.py turbo_streams --status``.

Off unless ``TURBO_ASYNC["METRICS"]`` is true, which needs ``prometheus_client``
(``pip install "turbo-async[metrics]"``). Off, every function here returns at once and nothing is
registered, sent or stored. The other modules call one function per event (``metrics.frame_sent(...)``);
what each metric means is in docs/monitoring.rst.

Exposition: a web process serves ``METRICS_PATH`` through :func:`asgi` (the documented ASGI
routing wraps Django's HTTP app with it); a Celery worker serves its metrics on ``METRICS_PORT``
once it is ready. With ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's multiprocess mode:
a prefork worker's pool processes, uvicorn's ``--workers``) both expose the sum over every
process writing to that directory.

The lag (``turbo_async_broadcast_lag_seconds``): the process that commits stamps the Celery message
with the wall-clock time of the commit (a header, ``turbo_async_committed``); the worker copies it
into the channel-layer message as ``"committed"`` (never sent to the browser); the web process
observes ``time.time() - committed`` when it writes the frame to each socket. Clocks of different
hosts must agree (NTP): a skew of the web host against the committing host adds to (or takes
from) every observation.

Over 500 lines, on purpose: the metric definitions, the one-call-per-event functions every layer
above calls, the exposition and the status records share one switch (``_resolve``: off, or
prometheus_client missing, means nothing is registered). Split, each part would import that
switch and the definitions back, and a layer-1 module is what every caller may import.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

from celery.signals import task_failure, task_postrun, task_prerun, worker_process_shutdown, worker_ready
from channels.layers import get_channel_layer
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import conf, history, placement
from .changes import BATCH_TASK, BROADCAST_TASK, STREAM_ACTION_TASK
from .exceptions import BatchHookError, DeliveryError

try:
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError:  # the "metrics" extra is not installed: everything here stays off
    prometheus_client = None  # type: ignore[assignment]

logger = logging.getLogger("turbo_async")

HEADER = "turbo_async_committed"
"""The Celery message header carrying the commit's wall-clock time (seconds since the epoch)."""
COMMITTED = "committed"
"""The key of the commit time in a channel-layer message."""
REFRESH_TASK = "turbo_async.refresh"  # refreshes.REFRESH_TASK (a layer above this one)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Bounds, in seconds, of the lag histogram (and of the status' p50 / p99, read from it)."""
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

STATUS_KEY = "turbo_async:status:"
STATUS_GROUP = "turbo_async.status"
"""The status records of every web process live on the layer shard of this (group) name."""
STATUS_WINDOW = 60.0
"""Seconds of lag the status' p50 / p99 cover."""


class Metrics:
    """The metric objects of this process, made once, when metrics are first on."""

    def __init__(self) -> None:
        p = prometheus_client
        assert p is not None
        prefix = "turbo_async_"
        # -- web --
        self.sockets = p.Gauge(prefix + "sockets", "Open WebSockets of turbo_async's consumer.",
                               multiprocess_mode="livesum")
        self.subscriptions = p.Gauge(prefix + "subscriptions", "Subscriptions (signed names) held by open sockets.",
                                     multiprocess_mode="livesum")
        self.frames = p.Counter(prefix + "frames_sent", "Messages carrying frames written to sockets.")
        self.bytes = p.Counter(prefix + "bytes_sent", "Bytes of those messages (JSON text).")
        self.lag = p.Histogram(prefix + "broadcast_lag_seconds",
                               "From the commit of a change to its frame written to a socket.", buckets=LAG_BUCKETS)
        self.replays = p.Counter(prefix + "replays", "Replays from the history that sent frames.")
        self.replayed = p.Counter(prefix + "replayed_frames", "Publications sent by replays.")
        self.resets = p.Counter(prefix + "resets", "Pages told to refresh because a replay was impossible.",
                                ["reason"])
        self.refused = p.Counter(prefix + "refused_subscriptions", "Subscriptions refused.", ["reason"])
        self.closes = p.Counter(prefix + "closes", "Closed sockets, by WebSocket close code.", ["code"])
        # -- worker --
        self.broadcasts = p.Counter(prefix + "broadcasts", "Changes and actions a worker broadcast.", ["hook"])
        self.batch = p.Histogram(prefix + "batch_size", "Changes and actions per broadcast task.",
                                 buckets=BATCH_BUCKETS)
        self.hook_errors = p.Counter(prefix + "hook_errors", "Broadcasts whose hook raised.")
        self.render = p.Histogram(prefix + "render_seconds",
                                  "Time of a broadcast task outside its sends: reload, hooks, render.",
                                  buckets=TIME_BUCKETS)
        self.send = p.Histogram(prefix + "send_seconds", "Time of delivering a task's frames (group_sends).",
                                buckets=TIME_BUCKETS)
        self.history = p.Histogram(prefix + "history_append_seconds", "Time of numbering a publication in Redis.",
                                   buckets=TIME_BUCKETS)
        self.drops = p.Counter(prefix + "capacity_drops",
                               "Web processes a publication was dropped for (channel over capacity).")
        self.refreshes = p.Counter(prefix + "refreshes", "Refresh frames sent.", ["reason"])
        # -- request side --
        self.waiting = p.Gauge(prefix + "outbox_waiting", "Committed changes waiting for the broker.",
                               multiprocess_mode="livesum")
        self.oldest = p.Gauge(prefix + "outbox_oldest_age_seconds",
                              "Age of the oldest change waiting, as of the outbox thread's last round.",
                              multiprocess_mode="livemax")
        self.publish_failures = p.Counter(prefix + "publish_failures",
                                          "Publishes the broker refused (retried by the outbox, or given up).")
        self.dropped = p.Counter(prefix + "dropped", "Broadcasts given up on the request side.", ["reason"])
        # The web process's hot path (once per frame and socket) adds to plain numbers, which
        # flush() moves into the Prometheus objects above: before each scrape this process
        # serves, and every FLUSH_INTERVAL (for a scrape served by another process).
        self.pending_frames = 0
        self.pending_bytes = 0
        self.pending_lag = [0] * (len(LAG_BUCKETS) + 1)
        self.pending_lag_sum = 0.0
        self.frames_written = 0  # flushed so far, for the status record's frames per minute
        # Plain counts of this process, for the status record.
        self.socket_count = 0
        self.subscription_count = 0
        self.waiting_count = 0
        self.oldest_age = 0.0


_made: Metrics | None = None
_on: Metrics | None = None
_resolved = False


def _resolve() -> Metrics | None:
    global _made, _on, _resolved
    if conf.get().METRICS and prometheus_client is not None:
        if _made is None:
            _made = Metrics()
        _on = _made
    else:
        _on = None
    _resolved = True
    return _on


def active() -> Metrics | None:
    """This process's metrics, or ``None`` when they are off."""
    return _on if _resolved else _resolve()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _resolved
    if setting == "TURBO_ASYNC":
        _resolved = False


# -- web process ---------------------------------------------------------------------------


def socket_opened() -> None:
    m = _on if _resolved else _resolve()
    if m is None:
        return
    m.sockets.inc()
    m.socket_count += 1
    _start_reporter()


def socket_closed(code: Any, subscriptions: dict[str, set[str]] | None) -> None:
    """A socket's disconnect; ``subscriptions`` is ``None`` when it never connected."""
    m = _on if _resolved else _resolve()
    if m is None:
        return
    m.closes.labels(str(code)).inc()
    if subscriptions is None:
        return
    held = sum(len(names) for names in subscriptions.values())
    m.sockets.dec()
    m.socket_count -= 1
    m.subscriptions.dec(held)
    m.subscription_count -= held


def subscribed(subscriptions: dict[str, set[str]], group: str, signed_name: str) -> None:
    """Before ``signed_name`` is added to a socket's ``subscriptions``: counted if it is new."""
    m = _on if _resolved else _resolve()
    if m is None or signed_name in subscriptions.get(group, ()):
        return
    m.subscriptions.inc()
    m.subscription_count += 1


def unsubscribed(names: set[str], signed_name: str) -> None:
    """Before ``signed_name`` is discarded from a socket's ``names`` of one group."""
    m = _on if _resolved else _resolve()
    if m is None or signed_name not in names:
        return
    m.subscriptions.dec()
    m.subscription_count -= 1


REFUSALS = {
    "permission denied": "permission_denied",
    "permission test failed": "permission_error",
}


def refused(reason: str) -> None:
    """A refused subscribe; ``reason`` is a short code, or the consumer's refusal text."""
    m = _on if _resolved else _resolve()
    if m is None:
        return
    if reason.startswith("unknown stream"):
        reason = "unknown_stream"
    m.refused.labels(REFUSALS.get(reason, reason)).inc()


_bucket = bisect.bisect_left  # one lookup fewer per frame and socket


def frame_sent(size: int, committed: Any) -> None:
    """One message of frames (``size`` characters of ASCII JSON) written to a socket. Called on
    the event loop only (as :func:`flush`), so plain additions are safe. The process's one call
    per frame and socket: about 1% of a web process's CPU per frame (docs/benchmarks.rst)."""
    m = _on if _resolved else _resolve()
    if m is None:
        return
    m.pending_frames += 1
    m.pending_bytes += size
    if isinstance(committed, float):
        lag = time.time() - committed
        if lag > 0.0:
            m.pending_lag[_bucket(LAG_BUCKETS, lag)] += 1  # the first bucket whose bound >= lag
            m.pending_lag_sum += lag
        else:  # the committing host's clock is ahead of this one's: no lag
            m.pending_lag[0] += 1


def flush(m: Metrics) -> None:
    """Move what :func:`frame_sent` added up into the Prometheus objects.

    A histogram's observations are added bucket by bucket through prometheus_client's
    ``Histogram._buckets`` (one count per bucket, not cumulative) and ``_sum``: the one place
    turbo_async touches its internals, pinned by tests/test_metrics.py. ``observe()`` per frame
    and socket took two locks each time."""
    if m.pending_frames:
        frames, m.pending_frames = m.pending_frames, 0
        m.frames.inc(frames)
        m.frames_written += frames
        size, m.pending_bytes = m.pending_bytes, 0
        m.bytes.inc(size)
    if m.pending_lag_sum or any(m.pending_lag):
        counts, m.pending_lag = m.pending_lag, [0] * (len(LAG_BUCKETS) + 1)
        total, m.pending_lag_sum = m.pending_lag_sum, 0.0
        for index, count in enumerate(counts):
            if count:
                m.lag._buckets[index].inc(count)
        m.lag._sum.inc(total)


def replayed(frames: int) -> None:
    m = _on if _resolved else _resolve()
    if m is None or not frames:
        return
    m.replays.inc()
    m.replayed.inc(frames)


RESETS = (
    ("offsets are gone", "offsets_gone"),
    ("epoch changed", "epoch_changed"),
    ("publications missed", "too_far_behind"),
    ("no longer in the history", "trimmed"),
    ("cannot be read", "history_unreadable"),
)
"""The ``reason`` label of each of :func:`turbo_async.history.since`'s resets (and the consumer's)."""


def reset_sent(reason: str) -> None:
    m = _on if _resolved else _resolve()
    if m is None:
        return
    label = next((code for text, code in RESETS if text in reason), "other")
    m.resets.labels(label).inc()


# -- worker ----------------------------------------------------------------------------------

_task = threading.local()


def stamped(message: dict[str, Any]) -> dict[str, Any]:
    """A channel-layer message, with the commit time of the task being run when there is one."""
    committed = getattr(_task, "committed", None)
    if committed is not None:
        message[COMMITTED] = committed
    return message


_F = TypeVar("_F", bound=Callable[..., Any])


def timed_send(function: _F) -> _F:
    """Decorates the delivery of a task's frames: ``turbo_async_send_seconds``."""

    @wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        m = _on if _resolved else _resolve()
        if m is None:
            return function(*args, **kwargs)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            m.send.observe(elapsed)
            _task.sent = getattr(_task, "sent", 0.0) + elapsed

    return timed  # type: ignore[return-value]


_T = TypeVar("_T")


async def timed_history(call: Awaitable[_T]) -> _T:
    """Awaits a history append: ``turbo_async_history_append_seconds``."""
    m = _on if _resolved else _resolve()
    if m is None:
        return await call
    started = time.perf_counter()
    try:
        return await call
    finally:
        m.history.observe(time.perf_counter() - started)


def capacity_dropped(processes: int) -> None:
    m = _on if _resolved else _resolve()
    if m is not None:
        m.drops.inc(processes)


def hook_failed() -> None:
    """A hook of a batch raised (a single broadcast's failure is counted from Celery's signal)."""
    m = _on if _resolved else _resolve()
    if m is not None:
        m.hook_errors.inc()


def refresh_sent() -> None:
    """A refresh frame: ``debounced`` from the delayed task, else ``immediate``."""
    m = _on if _resolved else _resolve()
    if m is not None:
        m.refreshes.labels("debounced" if getattr(_task, "name", "") == REFRESH_TASK else "immediate").inc()


def _hooks(name: str, args: Any) -> Iterable[str]:
    if name == BROADCAST_TASK and len(args) >= 3:
        return [f"{args[0]}.on_{args[2]}"]
    if name == STREAM_ACTION_TASK and len(args) >= 4:
        return [f"{args[0]}.{args[3]}"]
    if name == BATCH_TASK and args and isinstance(args[0], list):
        return [_item_hook(item) for item in args[0] if isinstance(item, dict)]
    if name == REFRESH_TASK:
        return ["refresh"]
    return []


def _item_hook(item: dict[str, Any]) -> str:
    if "stream" in item:
        return f"{item.get('stream')}.{item.get('action')}"
    return f"{item.get('label')}.on_{item.get('event')}"


@task_prerun.connect
def _task_started(task: Any = None, args: Any = None, **kwargs: Any) -> None:
    name = getattr(task, "name", "")
    if not name.startswith("turbo_async."):
        return
    _task.name = name
    m = _on if _resolved else _resolve()
    if m is None:
        return
    committed = task.request.get(HEADER)
    _task.committed = float(committed) if isinstance(committed, (int, float)) else None
    _task.started = time.perf_counter()
    _task.sent = 0.0
    hooks = Counter(_hooks(name, args or ()))  # a batch is mostly of one hook: one inc() each
    for hook, count in hooks.items():
        m.broadcasts.labels(hook).inc(count)
    if name != REFRESH_TASK:
        m.batch.observe(hooks.total())


@task_postrun.connect
def _task_ended(task: Any = None, **kwargs: Any) -> None:
    if not getattr(task, "name", "").startswith("turbo_async."):
        return
    _task.committed = None
    _task.name = ""
    m = _on if _resolved else _resolve()
    started = getattr(_task, "started", None)
    if m is None or started is None:
        return
    m.render.observe(max(0.0, time.perf_counter() - started - getattr(_task, "sent", 0.0)))
    _task.started = None


@task_failure.connect
def _task_failed(sender: Any = None, exception: BaseException | None = None, **kwargs: Any) -> None:
    name = getattr(sender, "name", "")
    ours = (BATCH_TASK, BROADCAST_TASK, STREAM_ACTION_TASK)
    if name not in ours or isinstance(exception, (BatchHookError, DeliveryError)):
        return  # a batch of several counts each failed hook itself; a delivery failure is not the hook's
    m = _on if _resolved else _resolve()
    if m is not None:
        m.hook_errors.inc()


def registry() -> Any:
    """The registry to expose: this process's, or, in multiprocess mode, every process's."""
    assert prometheus_client is not None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return prometheus_client.REGISTRY


@worker_ready.connect
def serve_worker_metrics(sender: Any = None, **kwargs: Any) -> None:
    """In a Celery worker's main process: serve the metrics on ``METRICS_PORT``."""
    settings = conf.get()
    if active() is None or settings.METRICS_PORT is None:
        return
    pool = str(getattr(getattr(sender, "controller", None), "pool_cls", "") or getattr(sender, "pool", ""))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and "solo" not in pool and "thread" not in pool:
        logger.warning(
            "this worker's pool processes keep their metrics to themselves: set PROMETHEUS_MULTIPROC_DIR "
            "to an empty directory before starting the worker (docs/monitoring.rst), or use --pool solo"
        )
    try:
        prometheus_client.start_http_server(settings.METRICS_PORT, settings.METRICS_ADDRESS, registry=registry())
    except OSError as exc:
        logger.error(
            "could not serve this worker's metrics on %s:%d (%s): give each worker on a host its own "
            "TURBO_ASYNC['METRICS_PORT']", settings.METRICS_ADDRESS, settings.METRICS_PORT, exc,
        )
        return
    logger.info("metrics of this worker on http://%s:%d/metrics", settings.METRICS_ADDRESS, settings.METRICS_PORT)


@worker_process_shutdown.connect
def _pool_process_gone(pid: int | None = None, **kwargs: Any) -> None:
    if prometheus_client is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


# -- request side ----------------------------------------------------------------------------

_publishing = threading.local()
_NO_HEADERS: dict[str, Any] = {}


def publishing(entries: Iterable[Any]) -> None:
    """The outbox thread is about to publish ``entries`` (with their monotonic ``since``, taken at
    commit): the messages it sends carry the earliest commit's wall-clock time."""
    if (_on if _resolved else _resolve()) is None:
        return
    since = min((entry.since for entry in entries), default=None)
    _publishing.committed = None if since is None else time.time() - (time.monotonic() - since)


def headers() -> dict[str, Any]:
    """The ``apply_async`` options that carry the commit time (empty when metrics are off)."""
    if (_on if _resolved else _resolve()) is None:
        return _NO_HEADERS
    committed = getattr(_publishing, "committed", None)
    return {"headers": {HEADER: committed if committed is not None else time.time()}}


def outbox_state(backlog: Any, commits: Any) -> None:
    """At the end of each round of the outbox thread: what waits, and since when."""
    _publishing.committed = None
    m = _on if _resolved else _resolve()
    if m is None:
        return
    waiting = len(backlog) + (commits.qsize() if commits is not None else 0)
    since = getattr(backlog[0], "since", None) if backlog else None
    m.waiting_count = waiting
    m.oldest_age = 0.0 if since is None else max(0.0, time.monotonic() - since)
    m.waiting.set(waiting)
    m.oldest.set(m.oldest_age)


def publish_failed(dropped: bool = False) -> None:
    """A publish the broker refused; ``dropped``: given up (``ON_PUBLISH_ERROR="log"``)."""
    m = _on if _resolved else _resolve()
    if m is None:
        return
    m.publish_failures.inc()
    if dropped:
        m.dropped.labels("publish_error").inc()


def outbox_dropped(reason: str, count: int = 1) -> None:
    m = _on if _resolved else _resolve()
    if m is not None:
        m.dropped.labels(reason).inc(count)


# -- exposition in the web process -------------------------------------------------------------

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def asgi(app: ASGIApp) -> ASGIApp:
    """``app`` (Django's HTTP application), with ``METRICS_PATH`` answered by the metrics when they
    are on. Everything else, and every request while metrics are off, goes to ``app``::

        "http": turbo_async.routing.with_metrics(django_asgi_app),
    """

    async def metrics_or_app(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or active() is None:
            await app(scope, receive, send)
            return
        m = _start_reporter()
        if scope.get("path") == conf.get().METRICS_PATH:
            assert prometheus_client is not None
            if m is not None:
                flush(m)
            body = prometheus_client.generate_latest(registry())
            await send({
                "type": "http.response.start", "status": 200,
                "headers": [(b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode())],
            })
            await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
            return
        await app(scope, receive, send)

    return metrics_or_app


# -- status records (manage.py turbo_streams --status) ---------------------------------------------

_reporters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = weakref.WeakKeyDictionary()


FLUSH_INTERVAL = 5.0
"""Seconds between two flushes of a web process's frame counts (at most; ``STATUS_INTERVAL`` if shorter)."""


def _start_reporter() -> Metrics | None:
    """Start this loop's reporter on the first request or socket; this process's metrics."""
    m = _on if _resolved else _resolve()
    loop = asyncio.get_running_loop()
    if m is not None and loop not in _reporters:
        _reporters[loop] = loop.create_task(_report(m))
    return m


def status_key() -> str:
    return f"{STATUS_KEY}{socket.gethostname()}:{os.getpid()}"


async def _report(m: Metrics) -> None:
    """Flush the frame counts; every ``STATUS_INTERVAL`` seconds write this process's status to
    the channel layer's Redis (a channels_redis layer only), kept for three intervals."""
    interval = conf.get().STATUS_INTERVAL
    layer = get_channel_layer()
    try:
        if interval <= 0 or layer is None or placement.shard_of(layer, STATUS_GROUP) is None:
            layer = None
    except placement.LayerInternalsChanged as exc:
        logger.error("this process's status is not reported to Redis: %s", exc)
        layer = None
    snapshots: deque[tuple[float, list[float], int]] = deque()
    warned = False
    while True:
        flush(m)
        if layer is not None:
            now = time.monotonic()
            snapshots.append((now, _lag_buckets(m), m.frames_written))
            while len(snapshots) > 1 and now - snapshots[1][0] >= STATUS_WINDOW:
                snapshots.popleft()
            (_, lags_before, frames_before), (_, lags_now, frames_now) = snapshots[0], snapshots[-1]
            record = status_record(m, lags_before, lags_now, frames_now - frames_before)
            try:
                redis = history.client(layer, STATUS_GROUP)
                await redis.set(status_key(), json.dumps(record), ex=max(1, int(interval * 3)))
                warned = False
            except Exception as exc:  # Redis down: the next round tries again
                if not warned:
                    logger.warning("could not write this process's status to Redis (%r)", exc)
                    warned = True
        await asyncio.sleep(min(interval, FLUSH_INTERVAL) if interval > 0 else FLUSH_INTERVAL)


def _lag_buckets(m: Metrics) -> list[float]:
    """This process's cumulative lag bucket counts (one per bound in ``LAG_BUCKETS``, then +Inf)."""
    counts = [0.0] * (len(LAG_BUCKETS) + 1)
    for family in m.lag.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                index = len(LAG_BUCKETS) if bound == float("inf") else LAG_BUCKETS.index(bound)
                counts[index] = sample.value
    return counts


def quantile(q: float, cumulative: list[float]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative bucket counts, interpolated within a bucket
    as Prometheus' ``histogram_quantile`` does; ``None`` without observations."""
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    index = bisect.bisect_left(cumulative, rank)
    if index >= len(LAG_BUCKETS):
        return LAG_BUCKETS[-1]
    lower = LAG_BUCKETS[index - 1] if index > 0 else 0.0
    below = cumulative[index - 1] if index > 0 else 0.0
    inside = cumulative[index] - below
    if inside <= 0:
        return LAG_BUCKETS[index]
    return lower + (LAG_BUCKETS[index] - lower) * (rank - below) / inside


def status_record(m: Metrics, before: list[float], now: list[float], frames: int) -> dict[str, Any]:
    """This process's status: ``before`` and ``now`` are the lag histogram's cumulative buckets
    about a minute apart (the p50 / p99 are of that window), ``frames`` the frames written in it."""
    window = [later - earlier for earlier, later in zip(before, now, strict=True)]
    p50, p99 = quantile(0.5, window), quantile(0.99, window)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "sockets": m.socket_count,
        "subscriptions": m.subscription_count,
        "frames_last_minute": frames,
        "lag_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "lag_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "outbox_waiting": m.waiting_count,
        "outbox_oldest_age_s": round(m.oldest_age, 1),
        "at": round(time.time(), 3),
    }


async def read_status(layer: Any) -> list[dict[str, Any]]:
    """The status records of the web processes alive now, by host and pid."""
    if placement.shard_of(layer, STATUS_GROUP) is None:
        return []
    redis = history.client(layer, STATUS_GROUP)
    records = []
    async for key in redis.scan_iter(match=STATUS_KEY + "*", count=500):
        raw = await redis.get(key)
        if raw is not None:
            records.append(json.loads(raw))
    return sorted(records, key=lambda record: (str(record.get("host")), int(record.get("pid", 0))))
