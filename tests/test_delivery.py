"""Delivery: the process's loop, ``group_send`` through it, and what counts as a layer error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

from turbo_async import delivery, worker
from turbo_async.exceptions import DeliveryError


class StalledLayer:
    """A channel layer whose ``group_send`` never finishes (a Redis that stopped answering)."""

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(60)


def test_asyncio_timeouts_count_as_layer_errors() -> None:
    # asyncio.wait_for raises asyncio.TimeoutError, which is TimeoutError only from Python 3.11.
    assert issubclass(asyncio.TimeoutError, delivery.LAYER_ERRORS)


def test_a_group_send_that_times_out_is_a_delivery_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """So the task retries it with backoff instead of failing as if the hook were wrong."""
    monkeypatch.setattr(delivery, "channel_layer", StalledLayer)
    with delivery.collect() as outgoing:
        delivery.send("turbo_async.group", "chat:RoomStream", "<turbo-stream></turbo-stream>")
    with override_settings(TURBO_ASYNC={"DELIVERY_TIMEOUT": 0.05}), pytest.raises(DeliveryError):
        worker._deliver(outgoing)


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
