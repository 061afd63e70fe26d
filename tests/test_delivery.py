"""Delivery: the process's loop, ``group_send`` through it, frames collected per stream."""

from __future__ import annotations

from typing import Any

import pytest

from turbo_async import delivery


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
