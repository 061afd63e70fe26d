"""Layer 3, request side: the outbox, committed changes waiting to be published, drained by one thread per process.

A commit hands its merged changes to the outbox and returns; the thread publishes them in commit
order, several per broker connection when they queue up. So a save pays neither the broker round
trip nor the broker's failures. At interpreter exit the outbox is flushed (for up to 5 s), and
:func:`flush` lets tests and management commands wait for it.

The outbox is bypassed, and changes published at commit, in Celery's eager mode, inside a task
(a worker child may exit without running ``atexit``), and when ``PUBLISH_IN_BACKGROUND`` is off.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading

from django.db import connections

from . import conf
from .changes import Change, StreamAction
from .publish import publish, publishes_now

logger = logging.getLogger("turbo_async")

EXIT_FLUSH_TIMEOUT = 5.0

Commit = tuple[list[Change | StreamAction], str]
"""The items of one commit and the database alias it committed on."""


class Outbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[Commit | threading.Event] | None = None
        self._pid = 0

    def _ensure_thread(self) -> queue.Queue[Commit | threading.Event]:
        if self._queue is not None and self._pid == os.getpid():
            return self._queue
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._queue = queue.Queue(maxsize=conf.get().OUTBOX_MAX_SIZE)
                self._pid = os.getpid()
                threading.Thread(
                    target=self._drain, args=(self._queue,), name="turbo-async-outbox", daemon=True
                ).start()
            return self._queue

    def put(self, items: list[Change | StreamAction], alias: str) -> None:
        try:
            self._ensure_thread().put_nowait((items, alias))
        except queue.Full:
            for item in items:
                logger.error(
                    "outbox full (%d commits waiting for the broker); the broadcast of %s is dropped",
                    conf.get().OUTBOX_MAX_SIZE, item.describe(),
                )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was put so far is published; False if ``timeout`` ran out first."""
        if self._queue is None or self._pid != os.getpid():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _drain(self, commits: queue.Queue[Commit | threading.Event]) -> None:
        while True:
            taken = [commits.get()]
            while True:  # take what queued up meanwhile: one producer connection for all of it
                try:
                    taken.append(commits.get_nowait())
                except queue.Empty:
                    break
            try:
                with conf.celery_app().producer_or_acquire() as producer:
                    for commit in taken:
                        if isinstance(commit, threading.Event):
                            continue
                        items, alias = commit
                        for item in items:
                            publish(item, alias, producer=producer)
            except Exception:  # publish() logs its own failures; this is the pool's
                logger.exception("the outbox could not reach the broker")
            finally:
                # ON_PUBLISH_ERROR="inline" ran hooks here: do not keep their database
                # connections open in this thread (they would outlive every request).
                for connection in connections.all(initialized_only=True):
                    connection.close()
                for commit in taken:
                    if isinstance(commit, threading.Event):
                        commit.set()


_outbox = Outbox()


def put(items: list[Change | StreamAction], alias: str) -> None:
    """Publish the ``items`` of a commit on ``alias``: in the background, or now (see above)."""
    if conf.get().PUBLISH_IN_BACKGROUND and not publishes_now():
        _outbox.put(items, alias)
        return
    for item in items:
        publish(item, alias)


def flush(timeout: float | None = None) -> bool:
    """Wait until every change committed so far by this process has been published.

    >>> Message.objects.create(room=room, text="hi")
    >>> turbo_async.outbox.flush(timeout=5)
    True
    """
    return _outbox.flush(timeout)


atexit.register(_outbox.flush, EXIT_FLUSH_TIMEOUT)
