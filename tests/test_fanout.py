"""The fan-out's own state (:mod:`turbo_async.fanout`); its behaviour with real processes is in
tests/integration/test_fanout.py."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer

from turbo_async import history
from turbo_async.fanout import FanOut
from turbo_async.protocol import MESSAGE_TYPE


def frame(offset: int, epoch: str = "e1") -> dict[str, Any]:
    return {"type": MESSAGE_TYPE, "group": "g", "data": f"<f{offset}/>", "epoch": epoch, "offset": offset}


def test_a_batch_that_arrives_after_a_later_one_does_not_move_the_received_position_back() -> None:
    """Two workers number their batches and send them in two steps, so batch 5 may reach the
    process after batch 6 (the soak saw it, tests/soak). The process has 6: its upkeep's audit
    compares the stream's position with this one, and would hand 6 to every socket again."""
    fan_out = FanOut(InMemoryChannelLayer())
    for offset in (6, 5):
        fan_out.note(frame(offset))
    assert fan_out.received["g"] == history.Position("e1", 6)


def test_a_new_epoch_is_received_whatever_its_offset() -> None:
    fan_out = FanOut(InMemoryChannelLayer())
    fan_out.note(frame(40))
    fan_out.note(frame(1, epoch="e2"))
    assert fan_out.received["g"] == history.Position("e2", 1)
