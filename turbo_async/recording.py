"""Layer 1: the test seam. One place decides where frames go and how publishing runs.

Normally frames go to the channel layer and committed changes go through Celery. While a recorder
is started (``turbo_async.testing`` does it), frames are handed to the recorders, sent on to the
layer only if one of them asks to, and committed changes are broadcast in this process, at
commit, without a broker or a worker.

>>> recording.start(recorder)   # recorder.record(group, message); recorder.deliver: bool
>>> recording.stop(recorder)
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Recorder(Protocol):
    deliver: bool
    """Also send the recorded frames to the channel layer."""

    def record(self, group: str, message: dict[str, Any]) -> None: ...


_recorders: list[Recorder] = []
_lock = threading.Lock()


def start(recorder: Recorder) -> None:
    """Hand every frame to ``recorder`` and broadcast in this process until :func:`stop`."""
    with _lock:
        _recorders.append(recorder)


def stop(recorder: Recorder) -> None:
    with _lock:
        _recorders.remove(recorder)


def active() -> bool:
    """Whether broadcasts run in this process (a recorder is started)."""
    return bool(_recorders)


def record(group: str, message: dict[str, Any]) -> bool:
    """Give a message to the started recorders. Returns whether it goes on to the channel layer."""
    recorders = list(_recorders)
    if not recorders:
        return True
    for recorder in recorders:
        recorder.record(group, message)
    return any(recorder.deliver for recorder in recorders)
