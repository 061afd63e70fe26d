"""Refreshes debounced across two real worker processes, through the broker's Redis.

Two Celery workers (their own queue, so the session's worker takes none of these tasks) run the
``stream.later.refresh()`` tasks published by this process; a real WebSocket client on uvicorn
counts the refresh frames each stream gets.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from tests.conftest import LOG_DIR
from tests.services import CeleryWorker, Process, RedisServer, StreamClient, Uvicorn, subscribed
from tests.testapp.factories import RoomFactory
from turbo_async import outbox
from turbo_async.changes import bound_request_id

pytestmark = pytest.mark.integration

QUEUE = "turbo-refreshes"
DEBOUNCE = 1.0
MAX_WAIT = 2.5
SETTINGS = {"QUEUE": QUEUE, "REFRESH_DEBOUNCE": DEBOUNCE, "REFRESH_MAX_WAIT": MAX_WAIT}


@pytest.fixture(scope="module")
def refresh_workers(
    redis_server: RedisServer, django_db_setup: None, django_db_blocker: object
) -> Iterator[list[CeleryWorker]]:
    workers = [
        CeleryWorker(LOG_DIR, name=f"refresh-{n}", TURBO_TEST_TURBO_ASYNC=json.dumps(SETTINGS)) for n in "ab"
    ]
    try:
        for process in workers:  # both boot at once (a worker takes seconds to start), then both must be ready
            process.args += ["-Q", QUEUE, "--prefetch-multiplier", "1"]
            Process.start(process)
        for process in workers:
            process.wait_ready()
        yield workers
    finally:
        for process in workers:
            process.stop()


@pytest.fixture
def publishing(
    live_broker: RedisServer, refresh_workers: list[CeleryWorker], web: Uvicorn, transactional_db: None
) -> Iterator[Uvicorn]:
    # BATCH_MAX_SIZE 1: the outbox must not carry a burst to one worker in a single batch; the
    # debounce has to agree across processes.
    with override_settings(TURBO_ASYNC={"QUEUE": QUEUE, "BATCH_MAX_SIZE": 1}):
        yield web


def refresh_later(room: Any, request_id: str) -> None:
    with bound_request_id(request_id):
        room.stream.later.refresh()  # one task each (BATCH_MAX_SIZE 1, above), run by either worker


def frames_until_silent(client: StreamClient, silence: float) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(client.receive(timeout=silence))
        except TimeoutError:
            return received


def test_a_burst_of_refreshes_is_one_frame_per_stream(publishing: Uvicorn, refresh_workers: list[CeleryWorker]) -> None:
    rooms = [RoomFactory(), RoomFactory()]
    names = {room.stream.signed_stream_name: room for room in rooms}
    sent: dict[str, list[str]] = {name: [] for name in names}
    with subscribed(publishing, *names) as client:
        for index in range(15):
            for name, room in names.items():
                request_id = f"room{room.pk}-{index}"
                sent[name].append(request_id)
                refresh_later(room, request_id)
        assert outbox.flush(10)
        received = frames_until_silent(client, silence=DEBOUNCE + 3)
    per_stream = {name: [m["data"] for m in received if m["signed_channel_name"] == name] for name in names}
    for name, frames in per_stream.items():
        assert len(frames) == 1, (frames, [w.log()[-3000:] for w in refresh_workers])
        [frame] = frames
        request_id = frame.split('request-id="')[1].split('"')[0]
        assert frame == f'<turbo-stream action="refresh" request-id="{request_id}"></turbo-stream>'
        assert request_id in sent[name]
    # Both worker processes took part: each ran refresh tasks whose frame the debounce absorbed.
    absorbed = re.compile(r"Task testapp\.RoomStream\.refresh\[[^\]]+\] succeeded in \S+ \{'frames': 0, 'streams': 0, 'changes': 1\}")
    for process in refresh_workers:
        assert absorbed.search(process.log()), process.log()[-3000:]


def test_continuous_changes_refresh_at_least_every_max_wait(publishing: Uvicorn) -> None:
    room = RoomFactory()
    during: list[dict[str, Any]] = []
    sent = 0
    with subscribed(publishing, room.stream.signed_stream_name) as client:
        started = time.monotonic()
        while time.monotonic() - started < 3 * MAX_WAIT:  # never quiet for DEBOUNCE seconds
            refresh_later(room, f"c{sent}")
            sent += 1
            try:
                during.append(client.receive(timeout=0.2))  # also the pause between changes
            except TimeoutError:
                pass
        after = frames_until_silent(client, silence=DEBOUNCE + 3)
    # Without the max wait, no refresh would reach the page until the changes stop.
    assert len(during) >= 2, during
    # And still debounced: dozens of changes, a handful of frames.
    assert len(during) + len(after) <= 6, (sent, during, after)
    assert all(m["data"].startswith('<turbo-stream action="refresh" request-id="c') for m in during + after)
