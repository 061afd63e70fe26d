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


def test_the_drop_counter_reads_channels_redis_over_capacity_records_of_this_send_only() -> None:
    import logging

    log = logging.getLogger(delivery.CHANNELS_REDIS_LOGGER)
    delivery.DropCounter.install()
    assert log.isEnabledFor(logging.INFO)
    outside = log.makeRecord(log.name, logging.INFO, __file__, 1, delivery.OVER_CAPACITY, (3, 5, "g"), None)
    for f in log.filters:
        f.filter(outside)  # no send running: nothing counted, nothing raised
    token = delivery._drops.set([])
    try:
        log.info(delivery.OVER_CAPACITY, 2, 4, "g")
        log.info("something else %s", 1)
        assert delivery._drops.get() == [2]
    finally:
        delivery._drops.reset(token)


def test_one_unreachable_shard_does_not_hold_back_the_other_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """deliver() tries every stream: the frames of a stream whose shard is down fail alone, named
    in NotDelivered; a retry (waited_since with groups) sends those only. group_send is replaced
    here: what is tested is deliver's loop, not a layer."""
    sent: list[str] = []

    def group_send(group: str, message: dict[str, Any]) -> int:
        if group == "b":
            raise ConnectionError("shard of b is down")
        sent.append(group)
        return 0

    monkeypatch.setattr(delivery, "group_send", group_send)
    outgoing = delivery.Outgoing()
    for group in ("a", "b", "c"):
        outgoing.add(group, f"app:{group.upper()}", f"<{group}/>")
    with pytest.raises(delivery.NotDelivered) as raised:
        delivery.deliver(outgoing)
    assert sent == ["a", "c"] and raised.value.streams == {"b": "app:B"}
    sent.clear()
    monkeypatch.setattr(delivery, "group_send", lambda group, message: sent.append(group) or 0)
    with delivery.waited_since(None, ["b"]):
        delivery.deliver(outgoing)
    assert sent == ["b"]
