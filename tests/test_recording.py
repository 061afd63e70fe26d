"""``turbo_async.recording``: the test seam. Without a recorder every frame goes to the channel
layer; with recorders started, each gets every frame, and the frame goes on to the layer only if
one of them asks to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from turbo_async import recording


class ListRecorder:
    def __init__(self, deliver: bool = False) -> None:
        self.deliver = deliver
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def record(self, group: str, message: dict[str, Any]) -> None:
        self.messages.append((group, message))


@pytest.fixture
def started() -> Iterator[list[ListRecorder]]:
    """Recorders started by the test, stopped after it."""
    recorders: list[ListRecorder] = []
    yield recorders
    for recorder in recorders:
        recording.stop(recorder)


def start(started: list[ListRecorder], deliver: bool = False) -> ListRecorder:
    recorder = ListRecorder(deliver)
    recording.start(recorder)
    started.append(recorder)
    return recorder


def test_without_a_recorder_nothing_is_recorded_and_frames_go_to_the_layer() -> None:
    assert not recording.active()
    assert recording.record("group", {"data": "x"}) is True


def test_a_started_recorder_gets_every_frame_and_keeps_it_from_the_layer(started: list[ListRecorder]) -> None:
    recorder = start(started)
    assert recording.active()
    assert recording.record("group", {"data": "x"}) is False
    assert recorder.messages == [("group", {"data": "x"})]


def test_a_recorder_that_delivers_lets_the_frame_go_on(started: list[ListRecorder]) -> None:
    start(started, deliver=True)
    assert recording.record("group", {"data": "x"}) is True


def test_every_started_recorder_gets_the_frame_and_any_one_may_deliver_it(started: list[ListRecorder]) -> None:
    quiet, delivering = start(started), start(started, deliver=True)
    assert recording.record("group", {"data": "x"}) is True
    assert quiet.messages == delivering.messages == [("group", {"data": "x"})]


def test_stopping_the_last_recorder_ends_recording() -> None:
    recorder = ListRecorder()
    recording.start(recorder)
    recording.stop(recorder)
    assert not recording.active()
    assert recording.record("group", {"data": "x"}) is True
    assert recorder.messages == []
