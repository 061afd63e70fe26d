"""Delivery to the page through faults (docs/guarantees.rst, "Delivery to the page"), with real
processes: a broker Redis, a channel-layer Redis (no append-only file: a restart loses every
group membership, as a cache-like production Redis would), a Celery worker and a uvicorn.

The heartbeat interval is short here (``TURBO_TEST_HEARTBEAT``, default 1 s) so each test takes a
few seconds; every bound below is stated in heartbeat intervals. Recovery times are measured and
printed (``-s`` shows them); the waits end at the stated bound and fail past it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOG_DIR
from tests.services import FaultStack, LogSince, StreamClient, Uvicorn, wait_offset
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import suppress

pytestmark = [pytest.mark.integration, pytest.mark.layer]

HEARTBEAT = float(os.environ.get("TURBO_TEST_HEARTBEAT", "1.0"))
HISTORY_SIZE = int(os.environ.get("TURBO_TEST_HISTORY_SIZE", "5"))
# Renewal happens on the heartbeat after the fault: one interval, plus a reconnect of the pooled
# connections and the time a worker needs for a task.
RECOVERY_BOUND = 3 * HEARTBEAT + 5


class RecoveryStack(FaultStack):
    """Redis for the broker, Redis for the channel layer (no append-only file), a worker and a
    uvicorn of their own, with a short heartbeat and history; ``settings`` add to them."""

    def __init__(self, root: Path, name: str, **settings: Any) -> None:
        turbo = {
            "DELIVERY_MAX_RETRIES": 3, "DELIVERY_RETRY_BACKOFF_MAX": 1, "HEARTBEAT_INTERVAL": HEARTBEAT,
            "HISTORY_SIZE": HISTORY_SIZE,
        }
        # The browser fixture sets DJANGO_ALLOW_ASYNC_UNSAFE in this process; the server must
        # keep Django's checks.
        super().__init__(root, LOG_DIR, name, turbo | settings, DJANGO_ALLOW_ASYNC_UNSAFE="")


@pytest.fixture(scope="module")
def recovery(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecoveryStack]:
    stack = RecoveryStack(tmp_path_factory.mktemp("recovery"), "recovery")
    with stack.serving():
        yield stack


@pytest.fixture
def live_recovery(recovery: RecoveryStack, transactional_db: None) -> Iterator[RecoveryStack]:
    """Committed rows, published to the stack's broker (Celery eager mode off), one task per save
    (BATCH_MAX_SIZE 1): these tests count offsets, and the outbox would batch saves that queue up."""
    from django.conf import settings
    from django.test import override_settings

    from workers import app

    app.conf.task_always_eager = False
    try:
        with override_settings(TURBO_ASYNC={**getattr(settings, "TURBO_ASYNC", {}), "BATCH_MAX_SIZE": 1}):
            yield recovery
    finally:
        app.conf.task_always_eager = True
        if recovery.layer.process is None:  # a failed test must not leave it down
            recovery.layer.start()


class Page:
    """A WebSocket client that keeps what it receives, sorted: pings, acks, errors, frames."""

    def __init__(self, server: Uvicorn, receive_buffer: int | None = None) -> None:
        self.client = StreamClient(server.ws_url, server.origin, receive_buffer=receive_buffer)
        self.pings: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []

    def subscribe(self, signed_name: str, **extra: Any) -> dict[str, Any]:
        self.client.send_raw(json.dumps({"type": "subscribe", "signed_channel_name": signed_name, **extra}))
        return self.next_reply()

    def pump(self, timeout: float) -> dict[str, Any] | None:
        """Receive one message (sorted into the lists); ``None`` if none came within ``timeout``."""
        try:
            message = self.client.receive(timeout=timeout, pings=True)
        except TimeoutError:
            return None
        if message.get("type") == "ping":
            self.pings.append(message)
        elif "data" in message:
            self.frames.append(message)
        else:
            self.other.append(message)
        return message

    def next_reply(self, timeout: float = 10) -> dict[str, Any]:
        """The next message that is neither a ping nor a frame."""
        deadline = time.monotonic() + timeout
        seen = len(self.other)
        while len(self.other) == seen:
            if time.monotonic() > deadline or self.pump(max(0.01, deadline - time.monotonic())) is None:
                raise AssertionError(f"no reply within {timeout}s; frames {self.frames}")
        return self.other[-1]

    def wait_frame(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in frame["data"] for frame in self.frames):
            if time.monotonic() > deadline:
                raise AssertionError(f"no frame with {text!r} within {timeout}s; got {self.frames}")
            self.pump(0.05)

    def close(self) -> None:
        self.client.close()


def recovery_time(page: Page, room: Any, what: str) -> float:
    """Save a message every 0.2 s until the page receives one; the seconds that took."""
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < RECOVERY_BOUND:
        n += 1
        MessageFactory(room=room, text=f"{what} {n}")
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            page.pump(0.05)
            if any(what in frame["data"] for frame in page.frames):
                return time.monotonic() - start
    raise AssertionError(f"no frame within {RECOVERY_BOUND}s of the {what}; got {page.frames}")


# -- liveness ----------------------------------------------------------------------------------


def test_the_server_pings_every_interval_and_frames_keep_turbo_djangos_fields(live_recovery: RecoveryStack) -> None:
    with suppress():
        room = RoomFactory()
    page = Page(live_recovery.web)
    try:
        name = room.stream.signed_stream_name  # signed anew (with a new timestamp) on each access
        assert page.subscribe(name)["type"] == "subscribed"
        while len(page.pings) < 2:
            assert page.pump(3 * HEARTBEAT) is not None, "no ping within 3 intervals"
        assert {"type", "t", "interval"} <= set(page.pings[0]) and page.pings[0]["interval"] == HEARTBEAT
        MessageFactory(room=room, text="hello")
        page.wait_frame("hello", 10)
        # turbo-django's fields, and the batch's position after them.
        assert set(page.frames[0]) == {"signed_channel_name", "data", "epoch", "offset"}
        assert page.frames[0]["signed_channel_name"] == name and page.frames[0]["offset"] >= 1
    finally:
        page.close()


@pytest.mark.parametrize("fault", ["flushall", "restart"])
def test_frames_flow_again_on_the_open_socket_after_the_layer_loses_its_groups(
    live_recovery: RecoveryStack, fault: str
) -> None:
    with suppress():
        room = RoomFactory()
    web_log = LogSince(live_recovery.web)
    page = Page(live_recovery.web)
    try:
        assert page.subscribe(room.stream.signed_stream_name)["type"] == "subscribed"
        MessageFactory(room=room, text="before")
        page.wait_frame("before", 10)
        if fault == "flushall":
            live_recovery.layer.flushall()
        else:
            live_recovery.restart_layer()
        seconds = recovery_time(page, room, f"after {fault}")
        print(f"\n{fault}: frames again on the open socket after {seconds:.2f} s (heartbeat {HEARTBEAT} s)")
        text = web_log.text()
        assert "Exception in ASGI application" not in text and "Traceback" not in text, text
        # The same socket: still open, still pinged.
        pings = len(page.pings)
        while len(page.pings) == pings:
            assert page.pump(3 * HEARTBEAT) is not None, "the socket went quiet"
    finally:
        page.close()


def test_a_socket_that_missed_the_last_frames_before_its_stream_went_quiet_is_sent_them(
    live_recovery: RecoveryStack,
) -> None:
    """The channel-layer Redis restarts and 3 messages are saved at once, before the layer has
    the socket's subscription back; then nothing more is saved. Each heartbeat the server compares
    the stream's position with what the socket was sent: within two heartbeats (plus the restart)
    the socket gets what it missed, or a ``reset`` when Redis lost the stream's history with the
    restart (the client then refreshes the page). It does not wait for the next save."""
    with suppress():
        room = RoomFactory()
    page = Page(live_recovery.web)
    name = room.stream.signed_stream_name
    try:
        assert page.subscribe(name)["type"] == "subscribed"
        MessageFactory(room=room, text="before")
        page.wait_frame("before", 10)
        live_recovery.restart_layer()
        restarted = time.monotonic()
        for n in range(3):
            MessageFactory(room=room, text=f"quiet {n}")
        deadline = restarted + RECOVERY_BOUND
        told = lambda: any(m.get("type") == "reset" for m in page.other)  # noqa: E731
        while not told() and not all(any(f"quiet {n}" in f["data"] for f in page.frames) for n in range(3)):
            assert time.monotonic() < deadline, f"nothing within {RECOVERY_BOUND}s: {page.frames[1:]}, {page.other}"
            page.pump(0.1)
        print(f"\nmissed frames: {'reset' if told() else 'replayed'} {time.monotonic() - restarted:.2f} s after the restart")
        if told():
            assert [m["signed_channel_name"] for m in page.other if m.get("type") == "reset"] == [name]
    finally:
        page.close()


# -- offsets and catch-up ----------------------------------------------------------------------


def away_and_back(stack: RecoveryStack, missed: int) -> tuple[Page, dict[str, Any], str, Any]:
    """A page that saw one frame, closed its socket, and missed ``missed`` messages meanwhile;
    back on a new socket, resubscribed with its last position. Returns the page, the reply to the
    resubscription, the name and the room."""
    with suppress():
        room = RoomFactory()
    name = room.stream.signed_stream_name
    page = Page(stack.web)
    page.subscribe(name)
    MessageFactory(room=room, text="seen")
    page.wait_frame("seen", 10)
    last = page.frames[-1]
    page.close()
    for n in range(missed):
        MessageFactory(room=room, text=f"missed {n}")
    wait_offset(stack.layer, room, last["offset"] + missed)
    back = Page(stack.web)
    reply = back.subscribe(name, epoch=last["epoch"], offset=last["offset"])
    return back, reply, name, room


def test_a_resubscription_with_its_offset_gets_exactly_the_missed_frames_in_order_then_live_ones(
    live_recovery: RecoveryStack,
) -> None:
    page, reply, name, room = away_and_back(live_recovery, 3)
    try:
        assert reply == {"type": "subscribed", "signed_channel_name": name}
        while len(page.frames) < 3:
            assert page.pump(5) is not None, page.frames
        assert ["missed 0" in f["data"] for f in page.frames] == [True, False, False]
        assert ["missed 2" in f["data"] for f in page.frames] == [False, False, True]
        offsets = [f["offset"] for f in page.frames]
        assert offsets == list(range(offsets[0], offsets[0] + 3))
        MessageFactory(room=room, text="live")
        page.wait_frame("live", 10)
        assert [f["offset"] for f in page.frames] == [*offsets, offsets[-1] + 1]  # no duplicate
    finally:
        page.close()


def test_a_resubscription_beyond_the_history_is_told_to_reset(live_recovery: RecoveryStack) -> None:
    page, reply, name, _room = away_and_back(live_recovery, HISTORY_SIZE + 2)
    try:
        assert reply["type"] == "subscribed"
        reset = page.next_reply()
        assert reset["type"] == "reset" and reset["signed_channel_name"] == name, reset
        assert "history" in reset["reason"]
        assert page.frames == []
    finally:
        page.close()


def test_a_resubscription_after_a_flush_is_told_to_reset(live_recovery: RecoveryStack) -> None:
    with suppress():
        room = RoomFactory()
    name = room.stream.signed_stream_name
    page = Page(live_recovery.web)
    try:
        page.subscribe(name)
        MessageFactory(room=room, text="seen")
        page.wait_frame("seen", 10)
        seen = page.frames[-1]
        live_recovery.layer.flushall()
        again = Page(live_recovery.web)
        try:
            assert again.subscribe(name, epoch=seen["epoch"], offset=seen["offset"])["type"] == "subscribed"
            assert again.next_reply()["type"] == "reset"
        finally:
            again.close()
    finally:
        page.close()


@pytest.mark.parametrize(
    ("epoch", "offset", "says"),
    [("abc", -1, "offset must be an integer"), ("not an epoch!", 1, "epoch must be"), ("abc", "1", "offset must be")],
)
def test_garbage_positions_get_a_clear_error_frame(
    live_recovery: RecoveryStack, epoch: Any, offset: Any, says: str
) -> None:
    with suppress():
        room = RoomFactory()
    name = room.stream.signed_stream_name
    page = Page(live_recovery.web)
    try:
        reply = page.subscribe(name, epoch=epoch, offset=offset)
        assert reply["type"] == "error" and reply["code"] == "bad_offset" and says in reply["error"], reply
        # The socket stays usable.
        assert page.subscribe(name)["type"] == "subscribed"
    finally:
        page.close()


def test_an_offset_beyond_the_streams_last_gets_an_error_frame(live_recovery: RecoveryStack) -> None:
    page, _reply, name, room = away_and_back(live_recovery, 0)
    page.close()
    seen_epoch = None
    probe = Page(live_recovery.web)
    try:
        probe.subscribe(name)
        MessageFactory(room=room, text="probe")
        probe.wait_frame("probe", 10)
        seen_epoch = probe.frames[-1]["epoch"]
        forged = Page(live_recovery.web)
        try:
            assert forged.subscribe(name, epoch=seen_epoch, offset=10**6)["type"] == "subscribed"
            error = forged.next_reply()
            assert error["type"] == "error" and error["code"] == "bad_offset", error
            assert "beyond the stream's last offset" in error["error"]
        finally:
            forged.close()
    finally:
        probe.close()


# -- a web process stalled during a burst -------------------------------------------------------

BURST = int(os.environ.get("TURBO_TEST_STALL_BURST", "150"))
STALL_SECONDS = 3.0


def test_a_web_process_stalled_during_a_burst_loses_nothing_unseen(live_recovery: RecoveryStack) -> None:
    """The web process is frozen (SIGSTOP) for at least STALL_SECONDS while BURST batches are
    broadcast to one socket. Pub/sub: Redis and the kernel hold them, every batch arrives, in
    order. Core: the process's channel key holds ``capacity`` (100) and the layer drops the rest;
    the worker says so at WARNING, and what the socket got ends in an offset gap, which the
    client turns into a catch-up or a refresh (tests/e2e/test_recovery.py). Either way nothing
    is lost unseen: received + dropped = sent."""
    import signal

    from tests.conftest import current_layer

    with suppress():
        room = RoomFactory()
    worker_log = LogSince(live_recovery.worker)
    page = Page(live_recovery.web)
    web = live_recovery.web.process
    assert web is not None
    try:
        assert page.subscribe(room.stream.signed_stream_name)["type"] == "subscribed"
        MessageFactory(room=room, text="before")
        page.wait_frame("before", 10)
        first = page.frames[-1]["offset"]
        os.killpg(web.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            for n in range(BURST):
                MessageFactory(room=room, text=f"burst {n}")
            wait_offset(live_recovery.layer, room, first + BURST, timeout=120)
            time.sleep(max(0.0, STALL_SECONDS - (time.monotonic() - stopped)))
        finally:
            os.killpg(web.pid, signal.SIGCONT)
        stall = time.monotonic() - stopped
        resumed = time.monotonic()
        # Until every batch came, or none for 3 s (pings go on meanwhile: they do not count).
        last_frame = resumed
        while len(page.frames) < BURST + 1 and time.monotonic() - last_frame < 3:
            message = page.pump(0.1)
            if message is not None and "data" in message:
                last_frame = time.monotonic()
        drained = last_frame - resumed
        offsets = [frame["offset"] for frame in page.frames[1:]]
        assert offsets == sorted(set(offsets)), "frames out of order or duplicated"
        received = len(offsets)
        print(f"\n{current_layer()}: web stalled {stall:.1f} s during a burst of {BURST}: "
              f"{received} received, {BURST - received} dropped, drained {drained:.2f} s after SIGCONT")
        if current_layer() == "pubsub":
            assert offsets == list(range(first + 1, first + BURST + 1))
        else:
            # What the socket missed, the worker reported, task by task; the socket's offsets
            # jump where it missed some, which the client catches up on or refreshes.
            # (each task's result, as Flower shows it; the WARNING line says the same)
            assert len(re.findall(r"'dropped': 1\b", worker_log.text())) == BURST - received
            assert "the channel layer dropped the frames of" in worker_log.text()
            assert set(offsets) <= set(range(first + 1, first + BURST + 1))
    finally:
        page.close()


SLOW_FRAMES = int(os.environ.get("TURBO_TEST_SLOW_FRAMES", "500"))
SLOW_FRAME_BYTES = 16_000


def frames_received(page: Page) -> int:
    """The frames the page received: a message with ``from_offset`` holds a run of them."""
    return sum(
        frame["offset"] - frame["from_offset"] + 1 if "from_offset" in frame else 1 for frame in page.frames
    )


def read_until_quiet(page: Page, count: int, quiet: float = 3.0) -> None:
    """Read until ``count`` frames came, or none for ``quiet`` seconds."""
    last = time.monotonic()
    while frames_received(page) < count and time.monotonic() - last < quiet:
        message = page.pump(0.1)
        if message is not None and "data" in message:
            last = time.monotonic()


def test_a_slow_reader_loses_nothing_unseen_and_does_not_hold_up_the_others(live_recovery: RecoveryStack) -> None:
    """Two sockets (64 KB receive buffers) stop reading while SLOW_FRAMES frames of 16 KB (8 MB,
    twice what the kernel buffers on the server's side) are broadcast to their stream, so the web
    process cannot write them all to them; another socket of the same stream reads throughout. The
    web process's fan-out keeps what a slow socket could not take in its own list (up to
    ``SOCKET_BACKLOG``, 1,000 messages: beyond, the socket is closed with 1013 and the page
    reconnects and catches up by offset), under both layers: every frame arrives, in order, once
    it reads again, and the reader beside them keeps up meanwhile. One slow socket subscribed with
    ``"ranges": true`` (as turbo-async.js does): the frames that queued up for it (beyond what the
    kernel's buffers took) come as fewer messages, each holding a run of offsets (``from_offset`` to ``offset``) and their frames in
    order; the other, a turbo-django client, gets one message per frame."""
    from tests.conftest import current_layer

    with suppress():
        room = RoomFactory()
    name = room.stream.signed_stream_name
    slow = Page(live_recovery.web, receive_buffer=65536)
    merging = Page(live_recovery.web, receive_buffer=65536)
    brisk = Page(live_recovery.web)
    try:
        for page in (slow, brisk):
            assert page.subscribe(name)["type"] == "subscribed"
        assert merging.subscribe(name, ranges=True)["type"] == "subscribed"
        MessageFactory(room=room, text="before")
        for page in (slow, merging, brisk):
            page.wait_frame("before", 10)
        first = slow.frames[-1]["offset"]
        padding = "x" * SLOW_FRAME_BYTES
        for n in range(SLOW_FRAMES):
            MessageFactory(room=room, text=f"slow {n} {padding}")
        read_until_quiet(brisk, SLOW_FRAMES + 1, quiet=20)  # the slow sockets are not read meanwhile
        wait_offset(live_recovery.layer, room, first + SLOW_FRAMES, timeout=60)
        read_until_quiet(slow, SLOW_FRAMES + 1)
        read_until_quiet(merging, SLOW_FRAMES + 1)
        expected = list(range(first + 1, first + SLOW_FRAMES + 1))
        brisk_offsets = [frame["offset"] for frame in brisk.frames[1:]]
        slow_offsets = [frame["offset"] for frame in slow.frames[1:]]
        runs = [(frame.get("from_offset", frame["offset"]), frame["offset"]) for frame in merging.frames[1:]]
        print(f"\n{current_layer()}: slow reader got {len(slow_offsets)} of {SLOW_FRAMES} frames of 16 KB, "
              f"the reader beside it {len(brisk_offsets)}, the slow reader taking ranges all of them "
              f"in {len(runs)} messages")
        assert brisk_offsets == expected
        assert slow_offsets == sorted(set(slow_offsets)), "frames out of order or duplicated"
        assert slow_offsets == expected
        assert [n for start, end in runs for n in range(start, end + 1)] == expected
        # About half the frames fit in the kernel's buffers and went one by one; the rest queued up.
        assert len(runs) < 0.8 * SLOW_FRAMES, "the frames that queued up were not merged"
        texts = re.findall(r"slow (\d+) ", "".join(frame["data"] for frame in merging.frames[1:]))
        assert texts == [str(n) for n in range(SLOW_FRAMES)]
    finally:
        slow.close()
        merging.close()
        brisk.close()
