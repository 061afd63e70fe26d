"""The broker path on each broker: the test process publishes to a real Redis or a real RabbitMQ
node (tests/conftest.py ``broker``), a real worker process consumes, a real uvicorn serves the
frames to a real WebSocket. The same tests for both brokers; what differs is only the URL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOG_DIR
from tests.services import Broker, CeleryWorker, Uvicorn, rabbitmq_binaries, subscribed
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import suppress

pytestmark = pytest.mark.integration

# Seconds a frame may take from the commit to the socket; small, as the services are local.
FRAME_TIMEOUT = float(os.environ.get("TURBO_TEST_BROKER_FRAME_TIMEOUT", "15"))


@pytest.fixture(scope="module")
def broker_worker(broker: Broker, django_db_setup: None) -> Iterator[CeleryWorker]:
    """One worker process consuming from the module's broker."""
    worker = CeleryWorker(LOG_DIR, name=f"brokers-{broker.name}", **broker.worker_env())
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def pipeline(publish_to: Broker, broker_worker: CeleryWorker, web: Uvicorn) -> Uvicorn:
    return web


def test_a_missing_rabbitmq_server_fails_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fixture raises this (an error, not a skip) on a machine without rabbitmq-server.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"install Debian's rabbitmq-server \(apt-get install rabbitmq-server"):
        rabbitmq_binaries(tmp_path / "rabbitmq-server")


def test_the_worker_consumes_from_the_broker_under_test(broker: Broker, broker_worker: CeleryWorker) -> None:
    from kombu import Connection

    # CELERY_BROKER_URL in its environment wins over the settings' Redis URL; the worker's banner
    # shows the URL it connected to as kombu writes it (password hidden).
    assert f"transport:   {Connection(broker.url).as_uri()}\n" in broker_worker.log(), broker_worker.log()


def test_a_save_reaches_the_socket(pipeline: Uvicorn) -> None:
    room = RoomFactory()
    with subscribed(pipeline, room.stream.signed_stream_name) as client:
        message = MessageFactory(room=room, text="through the broker")
        frames = client.receive_frames(timeout=FRAME_TIMEOUT)
    assert frames.startswith('<turbo-stream action="append" target="messages"><template>')
    assert f'id="message-{message.pk}"' in frames and "through the broker" in frames


def test_edit_then_delete_reach_the_socket_in_order(pipeline: Uvicorn) -> None:
    with suppress():
        room = RoomFactory()
        message = MessageFactory(room=room, text="before")
    message_id = message.pk
    with subscribed(pipeline, room.stream.signed_stream_name) as client:
        message.text = "after"
        message.save()
        edited = client.receive_frames(timeout=FRAME_TIMEOUT)
        message.delete()
        removed = client.receive_frames(timeout=FRAME_TIMEOUT)
    assert edited.startswith(f'<turbo-stream action="replace" target="message-{message_id}">')
    assert '<p class="message-text">after</p>' in edited
    assert removed == (
        f'<turbo-stream action="remove" target="message-{message_id}"><template></template></turbo-stream>'
    )


def test_every_save_of_a_burst_reaches_the_socket(pipeline: Uvicorn) -> None:
    with suppress():
        room = RoomFactory()
    count = 20
    with subscribed(pipeline, room.stream.signed_stream_name) as client:
        messages = [MessageFactory(room=room, text=f"burst {n}") for n in range(count)]
        # Saves that queue up in the outbox travel as batches: one WebSocket message may carry
        # several of them. Read until every message was seen (or time is up).
        received = ""
        deadline = time.monotonic() + FRAME_TIMEOUT
        while time.monotonic() < deadline and not all(f'id="message-{m.pk}"' in received for m in messages):
            received += client.receive_frames(timeout=max(0.1, deadline - time.monotonic()))
    # One frame per save: each message exactly once (order across tasks is not promised).
    for message in messages:
        assert received.count(f'id="message-{message.pk}"') == 1
