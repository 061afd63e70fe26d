"""Delivery: the process's loop, ``group_send`` through it, and what counts as a layer error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turbo_async import delivery


def test_asyncio_timeouts_count_as_layer_errors() -> None:
    # asyncio.wait_for raises asyncio.TimeoutError, which is TimeoutError only from Python 3.11.
    assert issubclass(asyncio.TimeoutError, delivery.LAYER_ERRORS)


def test_frames_sent_inside_collect_wait_for_deliver(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(delivery, "group_send", lambda group, message: sent.append((group, message)))
    with delivery.collect() as outgoing:
        delivery.send("g1", "a:S", "<one/>")
        delivery.send("g2", "a:T", "<two/>")
        delivery.send("g1", "a:S", "<three/>")
    assert sent == [] and outgoing.frame_count == 3
    delivery.deliver(outgoing)
    assert [(group, message["data"]) for group, message in sent] == [("g1", "<one/><three/>"), ("g2", "<two/>")]
