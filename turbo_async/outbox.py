"""Layer 3, request side: the outbox, committed changes waiting to be published by one thread per
process.

A commit hands its merged changes to the outbox and returns; the thread publishes them in commit
order, several per broker connection when they queue up. So a save pays neither the broker round
trip nor the broker's failures. While the broker is unreachable the thread keeps the changes and
tries again with backoff (up to ``OUTBOX_RETRY_BACKOFF_MAX`` seconds apart) until it is back,
dropping, with a log line naming each, only what waited longer than ``OUTBOX_MAX_AGE`` or did not
fit in ``OUTBOX_MAX_SIZE``. At interpreter exit and on SIGTERM the outbox is drained for up to
``OUTBOX_EXIT_TIMEOUT`` seconds, and what could not go is logged. :func:`flush` lets tests and
management commands wait for it.

With ``TURBO_ASYNC = {"OUTBOX": "database"}`` each change is also a row of
:class:`~turbo_async.models.OutboxEntry`, written in the saving transaction
(:mod:`~turbo_async.pending`); the thread deletes the rows it published, and :func:`sweep`
publishes the rows a killed process left behind (every ``OUTBOX_SWEEP_INTERVAL`` seconds, in every
process that runs the outbox, workers included).

The outbox is bypassed, and changes published at commit, in Celery's eager mode, inside a task
(a worker child may exit without running ``atexit``), and when ``PUBLISH_IN_BACKGROUND`` is off.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import FrameType
from typing import Any

from django.apps import apps
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from . import conf, metrics, publish
from .broker import describe_broker
from .changes import Change, StreamAction, from_payload, payload_of_message

logger = logging.getLogger("turbo_async")

BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, OSError, TimeoutError)
"""What an unreachable broker raises from ``apply_async``: retried, never dropped at once."""

SWEEP_CHUNK = 500
IDLE_CLOSE_AFTER = 1.0
"""Seconds without a commit after which the thread closes its database connections."""


@dataclass
class Entry:
    """One committed item on its way to the broker, with the outbox rows that stand for it."""

    item: Change | StreamAction
    alias: str
    rows: list[int] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class Outbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[Entry] | threading.Event] | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wake = threading.Event()  # cuts a backoff wait short (flush, exit)
        self._backlog: deque[Entry | threading.Event] = deque()
        self._published_at = float("-inf")  # when the last round of publishing ended

    def start(self) -> queue.Queue[list[Entry] | threading.Event]:
        """The queue of the drain thread, started (again) if this process has none alive."""
        thread = self._thread
        if self._queue is not None and self._pid == os.getpid() and thread is not None and thread.is_alive():
            return self._queue
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._queue = queue.Queue(maxsize=conf.get().OUTBOX_MAX_SIZE)
                self._backlog = deque()
                self._pid = os.getpid()
                self._thread = None
            if self._thread is None or not self._thread.is_alive():
                if self._thread is not None:
                    logger.error("the outbox thread had died; started a new one")
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="turbo-async-outbox", daemon=True
                )
                self._thread.start()
            return self._queue

    def put(self, entries: list[Entry]) -> None:
        try:
            self.start().put_nowait(entries)
        except queue.Full:
            metrics.outbox_dropped("outbox_full", len(entries))
            for entry in entries:
                logger.error(
                    "outbox full (%d commits waiting for the broker); the broadcast of %s is dropped%s",
                    conf.get().OUTBOX_MAX_SIZE, entry.item.describe(), _kept(entry),
                )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was put so far is published; False if ``timeout`` ran out first."""
        if self._queue is None or self._pid != os.getpid():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        return done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def waiting(self) -> list[Entry]:
        """The entries not published yet (those the thread holds, then those queued)."""
        held: list[Any] = []
        for source in (self._backlog, getattr(self._queue, "queue", ())):
            try:
                held.extend(list(source))
            except RuntimeError:  # changed while copied: the thread is busy; good enough
                pass
        entries: list[Entry] = []
        for value in held:
            if isinstance(value, Entry):
                entries.append(value)
            elif isinstance(value, list):
                entries.extend(value)
        return entries

    # -- the thread ---------------------------------------------------------------------------

    def _run(self, commits: queue.Queue[list[Entry] | threading.Event]) -> None:
        backlog = self._backlog
        failures, failing_since, last_sweep = 0, 0.0, float("-inf")
        while True:
            reached: list[threading.Event] = []  # flushes answered after this round
            try:
                if not backlog:
                    settings = conf.get()
                    database = settings.OUTBOX == "database"
                    try:
                        self._take(commits.get(timeout=IDLE_CLOSE_AFTER))
                    except queue.Empty:
                        # Idle: ON_PUBLISH_ERROR="inline" and the database outbox opened this
                        # thread's database connections; do not keep them while nothing comes
                        # (closing after every commit instead costs a reconnection each time).
                        _close_connections()
                        try:
                            self._take(commits.get(timeout=settings.OUTBOX_SWEEP_INTERVAL if database else None))
                        except queue.Empty:
                            pass
                settings = conf.get()
                database = settings.OUTBOX == "database"
                while len(backlog) < settings.OUTBOX_MAX_SIZE:
                    try:
                        self._take(commits.get_nowait())
                    except queue.Empty:
                        break
                self._linger(commits, settings)
                if database and time.monotonic() - last_sweep >= settings.OUTBOX_SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    sweep()
                published = self._publish(backlog, settings, reached, first_failure=not failures)
                self._published_at = time.monotonic()
                if published:
                    if failures:
                        logger.warning(
                            "the broker is reachable again after %.1f s; the waiting broadcasts are published",
                            time.monotonic() - failing_since,
                        )
                    failures = 0
                    continue
                if not failures:
                    failing_since = time.monotonic()
                failures += 1
                self._wake.clear()
                self._wake.wait(min(settings.OUTBOX_RETRY_BACKOFF_MAX, 0.1 * 2**failures))
            except Exception:  # never let the thread die on one bad round; start() restarts it anyway
                logger.exception("the outbox thread failed; retrying in 1 s")
                _close_connections()  # one may be broken
                time.sleep(1)
            finally:
                metrics.outbox_state(backlog, commits)
                for event in reached:
                    event.set()

    def _linger(self, commits: queue.Queue[list[Entry] | threading.Event], settings: conf.TurboAsyncSettings) -> None:
        """In a burst, wait up to ``BATCH_LINGER`` for more changes before publishing.

        A change that comes less than ``BATCH_LINGER`` after the last publish is one of changes
        arriving back to back (a loop of saves, a busy process). Publishing each as it comes
        costs a Celery publish (about 1 ms of this process's CPU, and of the GIL its requests
        need) per change, since each is gone before the next arrives; waiting a moment lets them
        queue up and go as one batch. A change after a pause goes at once: a lone change never
        waits. A flush (or a full batch) ends the wait."""
        linger = settings.BATCH_LINGER
        backlog = self._backlog
        if linger <= 0 or settings.BATCH_MAX_SIZE <= 1 or not backlog:
            return
        if time.monotonic() - self._published_at >= linger:
            return
        deadline = time.monotonic() + linger
        while len(backlog) < settings.BATCH_MAX_SIZE and not isinstance(backlog[-1], threading.Event):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._take(commits.get(timeout=remaining))
            except queue.Empty:
                return

    def _take(self, value: list[Entry] | threading.Event) -> None:
        if isinstance(value, threading.Event):
            self._backlog.append(value)
        else:
            self._backlog.extend(value)

    def _publish(
        self,
        backlog: deque[Entry | threading.Event],
        settings: conf.TurboAsyncSettings,
        reached: list[threading.Event],
        first_failure: bool = True,
    ) -> bool:
        """Publish the backlog in order. False when the broker failed: the rest waits. An outage
        is logged at WARNING once, when it starts (``first_failure``); its retries at DEBUG."""
        log = logger.warning if first_failure else logger.debug
        sent: dict[str, list[int]] = {}
        try:
            with conf.celery_app().producer_or_acquire() as producer:
                while backlog:
                    head = backlog[0]
                    if isinstance(head, threading.Event):
                        reached.append(head)
                        backlog.popleft()
                        continue
                    if time.monotonic() - head.since > settings.OUTBOX_MAX_AGE:
                        logger.error(
                            "the broadcast of %s waited for the broker longer than OUTBOX_MAX_AGE "
                            "(%s s) and is dropped%s", head.item.describe(), settings.OUTBOX_MAX_AGE, _kept(head),
                        )
                        metrics.outbox_dropped("max_age")
                        backlog.popleft()
                        continue
                    run = self._run_of(backlog, settings)
                    try:
                        self._send(run, producer)
                    except BROKER_ERRORS as exc:
                        metrics.publish_failed()
                        if settings.ON_PUBLISH_ERROR != "inline":
                            waiting = sum(isinstance(entry, Entry) for entry in backlog)
                            log(
                                "the broker is unreachable (%s: %s); the broadcast of %s%s waits and is "
                                "retried; tried %s",
                                type(exc).__name__, exc, head.item.describe(),
                                f" and {waiting - 1} more" if waiting > 1 else "", describe_broker(),
                            )
                            return False
                        for entry in run:
                            publish.failed(entry.item, entry.alias, exc)
                    for entry in run:
                        backlog.popleft()
                        sent.setdefault(entry.alias, []).extend(entry.rows)
        except BROKER_ERRORS as exc:  # the producer pool itself
            metrics.publish_failed()
            log(
                "the broker is unreachable (%s: %s); retrying; tried %s", type(exc).__name__, exc, describe_broker()
            )
            return False
        finally:
            _delete_rows(sent)
        return True


    @staticmethod
    def _run_of(backlog: deque[Entry | threading.Event], settings: conf.TurboAsyncSettings) -> list[Entry]:
        """The entries at the head of the backlog that go out together: one, or, when several
        queued up, up to ``BATCH_MAX_SIZE`` of them (never past a flush marker)."""
        run: list[Entry] = []
        for entry in backlog:
            if not isinstance(entry, Entry) or len(run) >= max(1, settings.BATCH_MAX_SIZE):
                break
            run.append(entry)
        return run

    @staticmethod
    def _send(run: list[Entry], producer: Any) -> None:
        """Send a run as one task (a lone change's is named after its hook); raises the
        broker's errors. Anything else fails only the entry it concerns."""
        metrics.publishing(run)
        if len(run) > 1:
            try:
                publish.send([(entry.item, entry.alias) for entry in run], producer)
                return
            except BROKER_ERRORS:
                raise
            except Exception:  # one item the broker cannot take: send them one by one
                logger.debug("a batch of %d could not be sent; sending its items one by one", len(run))
        for entry in run:
            try:
                publish.send([(entry.item, entry.alias)], producer)
            except BROKER_ERRORS:
                raise
            except Exception as exc:  # not the broker's fault: retrying would not help
                publish.failed(entry.item, entry.alias, exc)


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


def _kept(entry: Entry) -> str:
    return " (its outbox row stays for the sweep)" if entry.rows else ""


def _delete_rows(rows: dict[str, list[int]]) -> None:
    if not any(rows.values()):
        return
    model = apps.get_model("turbo_async", "OutboxEntry")
    for alias, ids in rows.items():
        for start in range(0, len(ids), SWEEP_CHUNK):
            try:
                model._base_manager.using(alias).filter(id__in=ids[start : start + SWEEP_CHUNK]).delete()
            except DatabaseError as exc:  # they are published again by the sweep: harmless
                logger.warning("could not delete %d published outbox row(s) on %r: %s", len(ids), alias, exc)


def sweep(older_than: float | None = None) -> int:
    """Publish, in commit order, the outbox rows older than ``older_than`` seconds (by default
    ``OUTBOX_SWEEP_AFTER``) on every database, and delete them. Returns how many went out.

    They are what a killed process committed but never published; a live process's rows are
    younger. A row published twice is harmless: broadcasts converge to the database.
    """
    settings = conf.get()
    age = settings.OUTBOX_SWEEP_AFTER if older_than is None else older_than
    model = apps.get_model("turbo_async", "OutboxEntry")
    published = 0
    for alias in connections:
        try:
            while True:
                count = _sweep_chunk(model, alias, age)
                published += count
                if count < SWEEP_CHUNK:
                    break
        except DatabaseError as exc:  # e.g. migrations not applied on this database
            logger.debug("no outbox sweep on %r: %s", alias, exc)
    if published:
        logger.warning("published %d broadcast(s) that a stopped process left in the outbox table", published)
    return published


def _sweep_chunk(model: Any, alias: str, age: float) -> int:
    cutoff = timezone.now() - timedelta(seconds=age)
    with transaction.atomic(using=alias):
        rows = model._base_manager.using(alias).filter(created_at__lte=cutoff).order_by("id")
        if connections[alias].features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)  # two sweepers share the work
        taken = list(rows[:SWEEP_CHUNK])
        with conf.celery_app().producer_or_acquire() as producer:
            for row in taken:
                items = _items_of(row)
                if items:
                    publish.send(items, producer)
        model._base_manager.using(alias).filter(id__in=[row.id for row in taken]).delete()
    return len(taken)


def _items_of(row: Any) -> list[tuple[Change | StreamAction, str]]:
    """The items an outbox row stands for, with the row's Flower name: rows of this version, or
    of 0.1.0 (until 0.3.0, :func:`~turbo_async.changes.payload_of_message`). A row that cannot be
    read is logged and dropped: it would fail the same way every time."""
    try:
        items = [from_payload(data) for data in payload_of_message(row.task, row.args, row.kwargs)]
    except ValueError as exc:
        logger.error("outbox row %s cannot be read and is dropped: %s", row.id, exc)
        return []
    if len(items) == 1 and row.shadow:
        item, using = items[0]
        items = [(replace(item, shadow=row.shadow), using)]
    return items


_outbox = Outbox()


def put(committed: Iterable[tuple[Change | StreamAction, list[int]]], alias: str) -> None:
    """Publish what a commit on ``alias`` committed (items and their outbox rows): in the
    background, or now (see above)."""
    entries = [Entry(item, alias, rows) for item, rows in committed]
    if conf.get().PUBLISH_IN_BACKGROUND and not publish.publishes_now():
        _outbox.put(entries)
        return
    for entry in entries:
        publish.publish(entry.item, alias)
    _delete_rows({alias: [row for entry in entries for row in entry.rows]})


def start() -> None:
    """Start this process's outbox thread now (the database outbox sweeps from it)."""
    _outbox.start()


def flush(timeout: float | None = None) -> bool:
    """Wait until every change committed so far by this process has been published.

    >>> Message.objects.create(room=room, text="hi")
    >>> turbo_async.outbox.flush(timeout=5)
    True
    """
    return _outbox.flush(timeout)


def drain_at_exit() -> None:
    """Give the outbox ``OUTBOX_EXIT_TIMEOUT`` seconds to publish, and log what it could not."""
    if _outbox._queue is None or _outbox._pid != os.getpid():
        return
    settings = conf.get()
    if _outbox.flush(settings.OUTBOX_EXIT_TIMEOUT):
        return
    left = _outbox.waiting()
    shown = ", ".join(entry.item.describe() for entry in left[:10]) + (", ..." if len(left) > 10 else "")
    kept = any(entry.rows for entry in left)
    logger.error(
        "exiting with %d broadcast(s) not published after %s s (OUTBOX_EXIT_TIMEOUT): %s%s",
        len(left), settings.OUTBOX_EXIT_TIMEOUT, shown,
        "; their outbox rows stay for the sweep" if kept else "",
    )


def install_sigterm_drain() -> None:
    """On SIGTERM, drain the outbox before dying, when nothing else handles SIGTERM.

    Servers (uvicorn, gunicorn, daphne, Celery) install their own handler and exit normally,
    which runs :func:`drain_at_exit` through ``atexit``; a plain script killed with SIGTERM would
    otherwise die at once with its committed changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        drain_at_exit()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


atexit.register(drain_at_exit)
