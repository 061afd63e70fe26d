"""Celery on RabbitMQ quorum queues (``task_default_queue_type = "quorum"``), with real
processes: the session's RabbitMQ node, a Celery worker, a channel-layer Redis and a uvicorn of
this module's own, and a real WebSocket client.

Quorum queues do not support global QoS, so a worker cannot hold countdown/ETA tasks in memory
the way it does on classic queues; Celery 5.5+ delays them in RabbitMQ instead (native delayed
delivery: the ``celery_delayed_*`` queues), which needs topic (or fanout) exchanges
(``task_default_exchange_type = "topic"``) and routes by whole seconds. tests/settings.py's
``QUORUM_QUEUES`` are the settings docs/deployment.rst gives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from tests.conftest import LOG_DIR
from tests.services import (
    CeleryWorker,
    LogSince,
    RabbitMQServer,
    RedisServer,
    StreamClient,
    Uvicorn,
    free_port,
    subscribed,
    use_broker,
)
from tests.settings import QUORUM_QUEUES
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import broker, outbox, suppress

pytestmark = pytest.mark.integration

QUEUE = QUORUM_QUEUES["task_default_queue"]
WORKER_SETTINGS = {"DELIVERY_RETRY_BACKOFF_MAX": 2}
MESSAGE_ID = re.compile(r'id="message-(\d+)"')


class QuorumStack:
    """A channel-layer Redis, a worker on the quorum queue and a uvicorn, of this module's own."""

    def __init__(self, root: Path, rabbitmq: RabbitMQServer) -> None:
        self.rabbitmq = rabbitmq
        self.layer = RedisServer(free_port(), root / "layer")
        env = {
            "CELERY_BROKER_URL": rabbitmq.url,
            "TURBO_TEST_QUORUM_QUEUES": "1",
            "TURBO_TEST_LAYER_REDIS_PORT": str(self.layer.port),
            "TURBO_TEST_TURBO_ASYNC": json.dumps(WORKER_SETTINGS),
        }
        self.worker = CeleryWorker(LOG_DIR, name="quorum-worker", **env)
        self.web = Uvicorn(LOG_DIR, name="quorum-web", **env)

    def start(self) -> None:
        self.layer.start()
        self.worker.start()
        self.web.start()

    def stop(self) -> None:
        self.web.stop()
        self.worker.stop()
        if self.layer.process is not None:
            self.layer.stop()


@pytest.fixture(scope="module")
def quorum(
    rabbitmq_server: RabbitMQServer, django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuorumStack]:
    stack = QuorumStack(tmp_path_factory.mktemp("quorum"), rabbitmq_server)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def quorum_publishing(url: str) -> Iterator[None]:
    """This process's Celery app publishes to ``url`` with QUORUM_QUEUES; its queues, exchanges
    and router (cached by ``app.amqp``) are made anew on the way in and out."""
    from workers import app

    previous = {key: app.conf[key] for key in QUORUM_QUEUES}
    previous_url = app.conf.broker_url
    app.conf.update(QUORUM_QUEUES)
    app.__dict__.pop("amqp", None)
    use_broker(url)
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True
        app.conf.update(previous)
        app.__dict__.pop("amqp", None)
        use_broker(previous_url)


@pytest.fixture
def live_quorum(quorum: QuorumStack, transactional_db: None) -> Iterator[QuorumStack]:
    with quorum_publishing(quorum.rabbitmq.url):
        yield quorum
    if quorum.layer.process is None:  # a failed test must not leave it down
        quorum.layer.start()


def read_until(client: StreamClient, done: Any, timeout: float = 15) -> str:
    """Frames received until ``done(text so far)`` holds (or time is up)."""
    import time

    received = ""
    deadline = time.monotonic() + timeout
    while not done(received) and time.monotonic() < deadline:
        try:
            received += client.receive_frames(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
    return received


def test_the_queue_is_a_quorum_queue_with_native_delayed_delivery(live_quorum: QuorumStack) -> None:
    from kombu import Connection

    from workers import app

    assert broker.native_delayed_delivery(app)
    with Connection(live_quorum.rabbitmq.url) as connection:
        channel = connection.channel()
        # Declaring it again as a quorum queue succeeds only if it is one (RabbitMQ refuses an
        # inequivalent x-queue-type with PRECONDITION_FAILED).
        channel.queue_declare(queue=QUEUE, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        # The worker declared the 28 delay levels (2**27 s down to 1 s); the last one is a quorum
        # queue with at-least-once dead-lettering into the delivery exchange (declared again with
        # the same arguments: RabbitMQ refuses any difference).
        for level in range(28):
            channel.queue_declare(queue=f"celery_delayed_{level}", passive=True)
        channel.queue_declare(
            queue="celery_delayed_0", durable=True, auto_delete=False,
            arguments={
                "x-queue-type": "quorum", "x-overflow": "reject-publish", "x-message-ttl": 1000,
                "x-dead-letter-exchange": "celery_delayed_delivery", "x-dead-letter-strategy": "at-least-once",
            },
        )
    log = live_quorum.worker.log()
    assert "Global QoS is disabled" in log, log[-3000:]
    assert "direct exchange" not in log, log[-3000:]


def test_every_broadcast_kind_reaches_the_socket_through_quorum_queues(live_quorum: QuorumStack) -> None:
    worker_log = LogSince(live_quorum.worker)
    with suppress():
        room = RoomFactory()
    with subscribed(live_quorum.web, room.stream.signed_stream_name) as client:
        # One change: one task.
        single = MessageFactory(room=room, text="one change")
        assert f'id="message-{single.pk}"' in read_until(client, lambda text: "one change" in text)
        # Changes of one transaction: one batch task.
        with transaction.atomic():
            batch = [MessageFactory(room=room, text=f"batch {n}").pk for n in range(5)]
        received = read_until(client, lambda text: all(f'id="message-{pk}"' in text for pk in batch))
        assert {int(pk) for pk in MESSAGE_ID.findall(received)} == set(batch)
        # stream.later: an action run by the worker.
        room.stream.later.append(text="run later", id="later-note")
        assert outbox.flush(10)
        assert read_until(client, lambda text: "run later" in text) == (
            '<turbo-stream action="append" target="later-note"><template>run later</template></turbo-stream>'
        )
        # A refresh (sent at once: refreshes are debounced through a Redis broker only).
        room.stream.later.refresh()
        assert outbox.flush(10)
        assert '<turbo-stream action="refresh"' in read_until(client, lambda text: "refresh" in text)
    text = worker_log.text()
    assert re.search(r"testapp\.MessageStream\.on_save x5\[[^\]]+\] succeeded", text), text[-3000:]
    assert "ERROR" not in text and "Traceback" not in text, text[-3000:]


@pytest.mark.layer
def test_a_retry_waits_in_rabbitmq_for_whole_seconds_and_is_delivered(live_quorum: QuorumStack) -> None:
    """The channel layer is down: the broadcast is retried with a countdown, which Celery routes
    through RabbitMQ's delay queues (a countdown below 1 s would be refused there; turbo_async
    rounds it up). Once the layer is back, the retried task delivers the frame."""
    from turbo_async import history

    with suppress():
        room = RoomFactory()
    group = room.stream.broadcastable_stream_name
    worker_log = LogSince(live_quorum.worker)
    live_quorum.layer.stop()
    message = MessageFactory(room=room, text="waited in rabbitmq")
    first = worker_log.wait_for(f"testapp.message pk={message.pk} (save) retry 1 in ")
    second = worker_log.wait_for(f"testapp.message pk={message.pk} (save) retry 2 in ")  # retry 1 came back
    live_quorum.layer.start()
    worker_log.wait_for(" succeeded in ", timeout=30)
    [(_, fields)] = live_quorum.layer.client().xrevrange(history.history_key(group), count=1)
    assert f'id="message-{message.pk}"' in fields[b"d"].decode()
    countdowns = re.findall(r"\(save\) retry \d+ in (\S+)s", second)
    assert countdowns and all(float(c) == int(float(c)) and float(c) >= 1 for c in countdowns), countdowns
    assert "ValueError" not in worker_log.text() and "direct exchange" not in first
