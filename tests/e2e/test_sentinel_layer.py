"""A channel layer behind Redis Sentinel, with Sentinel's default failure detection
(``down-after-milliseconds`` 30000, as sentinel.conf ships it), in Debian's Chromium against real
processes: a broker Redis, a layer master, its replica, one ``redis-server --sentinel``, a Celery
worker and a uvicorn whose channels_redis layer reaches the master through Sentinel.

The master is killed while messages are saved. Sentinel promotes the replica about 30 s later,
longer than the old retry budget (5 retries, 16-31 s), within ``DELIVERY_MAX_AGE`` (120 s, the
default here): the waiting broadcasts go out once the new master answers, and the replica's
``run_id`` gives each stream a new epoch, so the open page refreshes and equals the database
(docs/guarantees.rst, "Never silently wrong"; docs/scaling.rst, "Sentinel"). Takes about 45 s per
layer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import LOG_DIR, current_layer
from tests.e2e.conftest import OpenPage, database_texts, message_texts, room_url
from tests.factories import MessageFactory, RoomFactory
from tests.services import FaultStack, LogSince, RedisSentinel, RedisServer, free_port, publishing_to
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.layer]

PROMOTION_WAIT_S = 90.0
"""How long the test waits for Sentinel to promote the replica (30 s of detection, then the vote
and the failover; measured about 31-33 s)."""
AFTER_PROMOTION_S = 30.0
"""Bound asserted: the page equals the database within this many seconds of the promotion."""


class SentinelStack(FaultStack):
    def __init__(self, root: Path) -> None:
        sentinel_port = free_port()
        host = {"sentinels": [["127.0.0.1", sentinel_port]], "master_name": "turbo", "socket_timeout": None}
        super().__init__(
            root, LOG_DIR, "sentinel-layer", {}, DJANGO_ALLOW_ASYNC_UNSAFE="",
            TURBO_TEST_LAYER_HOSTS=json.dumps([host]),
        )
        self.replica = RedisServer(free_port(), root / "replica", "--replicaof", "127.0.0.1", str(self.layer.port))
        self.sentinel = RedisSentinel(sentinel_port, root / "sentinel", self.layer.port)

    def start(self) -> None:
        self.broker.start()
        self.layer.start()
        self.replica.start()
        self.sentinel.start()
        self.wait_replica_known()
        self.worker.start()
        self.web.start()

    def wait_replica_known(self, timeout: float = 30) -> None:
        """Until the replica is in sync and Sentinel lists it (it finds replicas through the
        master's INFO, every 10 s): only then can it promote one."""
        import redis

        sentinel = redis.Redis(port=self.sentinel.port, decode_responses=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            synced = self.replica.client().info("replication").get("master_link_status") == "up"
            if synced and sentinel.sentinel_slaves("turbo"):
                return
            time.sleep(0.2)
        raise AssertionError("Sentinel did not list the replica in time")

    def stop(self) -> None:
        super().stop()
        self.sentinel.stop()
        self.replica.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelStack]:
    services = SentinelStack(tmp_path_factory.mktemp("sentinel-layer"))
    with services.serving():
        yield services


@pytest.fixture
def live_stack(stack: SentinelStack, transactional_db: None) -> Iterator[SentinelStack]:
    with publishing_to(stack.broker.url):
        yield stack


def test_a_sentinel_failover_with_default_detection_leaves_the_page_equal_to_the_database(
    live_stack: SentinelStack, open_page: OpenPage
) -> None:
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(live_stack.web.origin, room))
    texts = message_texts(page)
    MessageFactory(room=room, text="before")
    expect(texts).to_have_text(["before"])
    worker_log = LogSince(live_stack.worker)
    master = live_stack.layer.process
    assert master is not None
    master.kill()  # SIGKILL: no shutdown, no save; Sentinel finds out on its own
    master.wait(10)
    live_stack.layer.process = None
    killed = time.monotonic()
    for n in range(5):
        MessageFactory(room=room, text=f"during the failover {n}")
    while live_stack.sentinel.master_port_now() != live_stack.replica.port:
        assert time.monotonic() - killed < PROMOTION_WAIT_S, "Sentinel did not promote the replica"
        time.sleep(0.2)
    promoted = time.monotonic()
    expect(texts).to_have_text(database_texts(room), timeout=int(AFTER_PROMOTION_S * 1000))
    equal = time.monotonic()
    print(
        f"\nSentinel ({current_layer()}): promoted {promoted - killed:.1f} s after the kill; the page "
        f"equals the database {equal - promoted:.1f} s after the promotion"
    )
    log = worker_log.text()
    assert "channel layer unreachable" in log and "gave up on the frames" not in log, log
