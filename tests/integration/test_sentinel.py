"""A Celery broker behind Redis Sentinel (``sentinel://`` URLs), with real processes: a master
and a replica ``redis-server``, three ``redis-server --sentinel`` (quorum 2), a Celery worker and
the test process publishing through the sentinels, the session's uvicorn and a real WebSocket.

Sentinel's ``down-after-milliseconds`` is 1000 here (``TURBO_TEST_SENTINEL_DOWN_AFTER_MS``) so a
failover takes seconds; sentinel.conf's default is 30000, and with it the broker is unreachable
for 30 s and more before the replica is promoted (docs/deployment.rst, "Redis Sentinel").
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests.conftest import LOG_DIR
from tests.services import (
    CeleryWorker,
    Process,
    RedisSentinel,
    RedisServer,
    StreamClient,
    Uvicorn,
    free_port,
    subscribed,
    use_broker,
)
from tests.testapp.factories import MessageFactory, RoomFactory
from turbo_async import outbox, suppress

pytestmark = pytest.mark.integration

MASTER_NAME = "turbo"
DOWN_AFTER_MS = int(os.environ.get("TURBO_TEST_SENTINEL_DOWN_AFTER_MS", "1000"))
VISIBILITY_TIMEOUT = os.environ.get("TURBO_TEST_SENTINEL_VISIBILITY_TIMEOUT", "5")
CONVERGED_WITHIN = 30.0
"""Seconds after the promotion by which every page must equal the database (issue 21)."""
MESSAGE_ID = re.compile(r'id="message-(\d+)"')


class SentinelBroker:
    """A master, its replica and three sentinels watching it, on loopback ports."""

    def __init__(self, root: Path) -> None:
        self.master = RedisServer(free_port(), root / "master")
        self.replica = RedisServer(free_port(), root / "replica")
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels = [
            RedisSentinel(
                free_port(), root / f"sentinel-{n}", self.master.port, MASTER_NAME, down_after_ms=DOWN_AFTER_MS,
                quorum=2, failover_timeout_ms=10_000,
            )
            for n in range(3)
        ]

    @property
    def url(self) -> str:
        return ";".join(sentinel.url for sentinel in self.sentinels)

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        wait_for(lambda: self.replica.client().info("replication").get("master_link_status") == "up", 20, "replication")
        for sentinel in self.sentinels:
            sentinel.start()
        # Each sentinel must know the others before it can vote a failover. sentinel_masters(), not
        # sentinel_master(): redis-py 6.4's sentinel_master() raises TypeError (return_responses).
        wait_for(
            lambda: all(
                int(s_client(s).sentinel_masters()[MASTER_NAME]["num-other-sentinels"]) == 2 for s in self.sentinels
            ),
            30, "the sentinels to find each other",
        )

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.replica, self.master):
            if server.process is not None and server.process.poll() is None:
                server.stop()
            server.process = None


def s_client(sentinel: RedisSentinel) -> Any:
    import redis

    return redis.Redis(port=sentinel.port, socket_timeout=2)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # a server that is still starting
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {timeout}s")


@pytest.fixture(scope="module")
def sentinel_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelBroker]:
    services = SentinelBroker(tmp_path_factory.mktemp("sentinel"))
    try:
        services.start()
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="module")
def sentinel_worker(sentinel_broker: SentinelBroker, django_db_setup: None) -> Iterator[CeleryWorker]:
    """A worker consuming through the sentinels; a killed worker's task returns after 5 s."""
    worker = CeleryWorker(
        LOG_DIR, name="sentinel-worker",
        CELERY_BROKER_URL=sentinel_broker.url, TURBO_TEST_SENTINEL_MASTER=MASTER_NAME,
        # A task the worker held when it exited comes back after this (and a restore sweep).
        **({"TURBO_TEST_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT} if VISIBILITY_TIMEOUT else {}),
        TURBO_TEST_TURBO_ASYNC=json.dumps({"REFRESH_DEBOUNCE": 0.5, "REFRESH_MAX_WAIT": 2.0}),
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def publishing(
    sentinel_broker: SentinelBroker, sentinel_worker: CeleryWorker, web: Uvicorn, transactional_db: None
) -> Iterator[SentinelBroker]:
    """This process publishes committed changes through the sentinels (Celery eager mode off)."""
    from workers import app

    previous_url, previous_options = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_transport_options = {**previous_options, "master_name": MASTER_NAME}
    use_broker(sentinel_broker.url)
    app.conf.task_always_eager = False
    try:
        yield sentinel_broker
    finally:
        app.conf.task_always_eager = True
        app.conf.broker_transport_options = previous_options
        use_broker(previous_url)


class Supervisor:
    """Starts the worker again when it exits, as systemd's ``Restart=always`` or compose's
    ``restart: unless-stopped`` would: Celery 5.7 / kombu 5.7 workers exit ("Unrecoverable
    error: AttributeError: 'NoneType' object has no attribute 'hostname'") when they lose their
    Redis broker while holding a task (DESIGN.md, docs/deployment.rst)."""

    def __init__(self, worker: CeleryWorker) -> None:
        self.worker = worker
        self.exits: list[str] = []

    def check(self) -> None:
        process = self.worker.process
        if process is not None and process.poll() is not None:
            errors = [line for line in self.worker.log().splitlines() if "Unrecoverable error" in line]
            self.exits.append(errors[-1] if errors else f"exit code {process.returncode}")
            self.worker.process = None
            Process.start(self.worker)


def collect_ids(client: StreamClient, wanted: set[int], timeout: float, supervisor: Supervisor | None = None) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        if supervisor is not None:
            supervisor.check()
        try:
            frames = client.receive_frames(timeout=max(0.1, min(0.5, deadline - time.monotonic())))
        except TimeoutError:
            continue
        seen.update(int(pk) for pk in MESSAGE_ID.findall(frames))
    return seen


def test_saves_and_a_debounced_refresh_go_through_the_sentinels_master(
    publishing: SentinelBroker, sentinel_worker: CeleryWorker, web: Uvicorn
) -> None:
    room = RoomFactory()
    with subscribed(web, room.stream.signed_stream_name) as client:
        message = MessageFactory(room=room, text="through sentinel")
        assert f'id="message-{message.pk}"' in client.receive_frames(timeout=15)
        with override_settings(TURBO_ASYNC={"BATCH_MAX_SIZE": 1}):
            for _ in range(10):  # ten tasks; in the worker, one debounce window through the master
                room.stream.later.refresh()
            assert outbox.flush(10)
        refreshes = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            try:
                refreshes.append(client.receive(timeout=max(0.1, deadline - time.monotonic()))["data"])
            except TimeoutError:
                break
    assert refreshes == ['<turbo-stream action="refresh"></turbo-stream>'], refreshes
    # The refresh went out from the delayed task that the debounce scheduled through the broker.
    assert re.search(r"testapp\.RoomStream\.refresh\.debounced\[[^\]]+\] succeeded", sentinel_worker.log())


def test_turbo_streams_check_reaches_the_broker_and_the_worker_through_the_sentinels(
    publishing: SentinelBroker, sentinel_worker: CeleryWorker
) -> None:
    out = io.StringIO()
    # The test process's own channel layer is in memory (E002 says so): only that fails.
    with pytest.raises(CommandError, match=r"^Broadcasts cannot go out: the check turbo_async.E002 failed\. $"):
        call_command("turbo_streams", "--check", "--worker-timeout", "3", stdout=out)
    report = out.getvalue()
    assert re.search(r"^Broker: OK sentinel://127\.0\.0\.1:\d+", report, re.MULTILINE), report
    assert re.search(r"^Workers: OK 1 worker on the queue 'celery' \(sentinel-worker-", report, re.MULTILINE), report


def test_killing_the_master_while_saves_flow_loses_no_save(
    publishing: SentinelBroker, sentinel_worker: CeleryWorker, web: Uvicorn
) -> None:
    """Last in the module: the master is gone afterwards. Saves go on while it is down and while
    Sentinel promotes the replica; each save returns (the outbox holds its change and retries),
    and the page receives every message within 30 s of the promotion."""
    with suppress():
        room = RoomFactory()
    saved: list[int] = []
    supervisor = Supervisor(sentinel_worker)
    with subscribed(web, room.stream.signed_stream_name) as client:
        saved += [MessageFactory(room=room, text=f"before {n}").pk for n in range(10)]
        seen = collect_ids(client, set(saved), 15)
        assert seen == set(saved)
        master = publishing.master.process
        assert master is not None
        killed_at = time.monotonic()
        master.send_signal(signal.SIGKILL)
        master.wait(10)
        publishing.master.process = None
        promoted_at: float | None = None
        while promoted_at is None:  # saves go on while the master is down and Sentinel decides
            saved.append(MessageFactory(room=room, text=f"during {len(saved)}").pk)
            if publishing.sentinels[0].master_port_now() == publishing.replica.port:
                promoted_at = time.monotonic()
            assert time.monotonic() - killed_at < 90, "Sentinel promoted no replica within 90 s"
            supervisor.check()
            time.sleep(0.05)
        saved += [MessageFactory(room=room, text=f"after {n}").pk for n in range(10)]
        seen |= collect_ids(client, set(saved) - seen, CONVERGED_WITHIN - (time.monotonic() - promoted_at), supervisor)
        converged_at = time.monotonic()
    missing = sorted(set(saved) - seen)
    print(
        f"\nSentinel (down-after-milliseconds {DOWN_AFTER_MS}): replica promoted {promoted_at - killed_at:.1f} s "
        f"after the SIGKILL; {len(saved)} saves; the page had every message "
        f"{converged_at - promoted_at:.1f} s after the promotion; the worker exited {len(supervisor.exits)} time(s) "
        f"and was started again {supervisor.exits}"
    )
    assert not missing, f"{len(missing)} of {len(saved)} messages never reached the page: {missing}\n{sentinel_worker.log()[-4000:]}"
