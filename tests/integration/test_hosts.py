"""Several hosts (docs/scaling.rst; issue 21): three web processes, two Celery workers and a
channel layer of two Redis shards, all real processes, with hundreds to a thousand open pages
modelled by :class:`tests.pageclient.PageClient` (the bundled client's behaviour: offsets applied
once and in order, a refresh on a gap, a new epoch or a reset, reconnection with backoff to any web
process). The first web process reaches shard 1 through :mod:`tests.proxy`, which can cut the line
as a partition would. Runs under both layers (``make test`` runs it again on the core layer).

After each fault every page must show exactly the database's messages of its room. Pages of
streams whose shard was not touched must not refresh. The figures each test prints (``-s``) are in
docs/scaling.rst.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOG_DIR, current_layer, layer_backend
from tests.pageclient import PageClient
from tests.pageswarm import PageSwarm
from tests.services import CeleryWorker, LogSince, RedisServer, Uvicorn, free_port, use_broker, wait_for_port
from tests.testapp.factories import MessageFactory, ProbeFactory, RoomFactory
from tests.testapp.models import Message, ProbeRun
from turbo_async import history, placement, suppress

pytestmark = [pytest.mark.integration, pytest.mark.layer]

WEBS = 3
SETTINGS = {"DELIVERY_MAX_AGE": 30, "DELIVERY_RETRY_BACKOFF_MAX": 1}
SETTLE_S = 20.0
"""Bound asserted after each fault: every page equals the database within this many seconds."""
ROLLING_CLIENTS = 1000
RECONNECT_P95_BOUND_S = float(os.environ.get("TURBO_TEST_RECONNECT_P95", "2"))
"""Issue 21's bound on the reconnections' 95th percentile during a rolling restart, asserted. The
reconnection includes the client's first backoff (0.5 s +/-20%)."""
PAGE_PROCESSES = 3
"""Child processes holding the rolling restart's pages (tests/pageswarm.py): with the 1,000 pages
in the test process's one event loop, the pages themselves were the bottleneck (p95 2.1-2.7 s with
other test runs beside it, the web processes mostly idle)."""


class Proxy:
    def __init__(self, listen: int, target: int) -> None:
        self.port = listen
        self.target = target
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.proxy", str(self.port), str(self.target)],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def cut(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)

    def mend(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class Hosts:
    """A broker Redis, two layer shards, a proxy in front of shard 1 for web 0, three uvicorns and
    two workers (redelivery of a killed worker's task after 3 s)."""

    def __init__(self, root: Path) -> None:
        self.broker = RedisServer(free_port(), root / "broker")
        self.shards = [RedisServer(free_port(), root / f"shard{n}") for n in range(2)]
        self.proxy = Proxy(free_port(), self.shards[1].port)
        self.direct = direct = [self.host(shard.port) for shard in self.shards]
        through_proxy = [direct[0], self.host(self.proxy.port)]
        env = {
            "TURBO_TEST_REDIS_PORT": str(self.broker.port),
            "TURBO_TEST_TURBO_ASYNC": json.dumps(SETTINGS),
            "TURBO_TEST_VISIBILITY_TIMEOUT": "3",
        }
        self.webs = [
            Uvicorn(LOG_DIR, name=f"hosts-web{n}", TURBO_TEST_LAYER_HOSTS=json.dumps(through_proxy if n == 0 else direct),
                    **env)
            for n in range(WEBS)
        ]
        self.workers = [
            CeleryWorker(LOG_DIR, name=f"hosts-worker{n}", TURBO_TEST_LAYER_HOSTS=json.dumps(direct), **env)
            for n in range(2)
        ]
        from django.utils.module_loading import import_string

        # The layer as the test process's "pages" render with (placement and positions).
        self.layer = import_string(layer_backend(current_layer()))(hosts=direct)

    @staticmethod
    def host(port: int) -> dict[str, Any]:
        return {"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": None}

    def start(self) -> None:
        self.broker.start()
        for shard in self.shards:
            shard.start()
        self.proxy.start()
        for worker in self.workers:
            worker.start()
        for web in self.webs:
            web.start()

    def stop(self) -> None:
        for web in self.webs:
            web.stop()
        for worker in self.workers:
            worker.stop()
        self.proxy.stop()
        for shard in self.shards:
            shard.stop()
        self.broker.stop()

    def urls(self) -> list[str]:
        """The web processes a load balancer sends new connections to (shared by every page: a
        test takes a process out before stopping it and puts it back once it listens again)."""
        if not hasattr(self, "_urls"):
            self._urls = [web.ws_url for web in self.webs]
        return self._urls

    def shard_of(self, room: Any) -> int:
        index = placement.shard_of(self.layer, room.stream.broadcastable_stream_name)
        assert index is not None
        return index


@pytest.fixture(scope="module")
def hosts(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    from workers import app

    stack = Hosts(tmp_path_factory.mktemp("hosts"))
    stack.start()
    previous = app.conf.broker_url
    use_broker(stack.broker.url)
    try:
        yield stack
    finally:
        use_broker(previous)
        stack.stop()


@pytest.fixture
def live_hosts(hosts: Hosts, transactional_db: None) -> Iterator[Hosts]:
    from workers import app

    app.conf.task_always_eager = False
    try:
        yield hosts
    finally:
        app.conf.task_always_eager = True
        for shard in hosts.shards:
            if shard.process is None:
                shard.start()
        hosts.proxy.mend()
        for process in [*hosts.workers, *hosts.webs]:
            if process.process is None or process.process.poll() is not None:
                process.start()


def rooms_on_both_shards(stack: Hosts, per_shard: int) -> list[Any]:
    """Rooms whose streams live ``per_shard`` on each shard."""
    found: dict[int, list[Any]] = {0: [], 1: []}
    with suppress():
        while min(len(found[0]), len(found[1])) < per_shard:
            room = RoomFactory()
            if len(found[stack.shard_of(room)]) < per_shard:
                found[stack.shard_of(room)].append(room)
            else:
                room.delete()
    return found[0] + found[1]


def render(stack: Hosts) -> Any:
    async def load(room: Any) -> tuple[set[int], tuple[str, int] | None]:
        # As a page renders: {% turbo_subscribe %} reads the stream's position (history.at_render),
        # and the rows come from the database.
        position = await asyncio.to_thread(history.at_render, stack.layer, room.stream.broadcastable_stream_name)
        shown = await asyncio.to_thread(lambda: set(Message.objects.filter(room=room).values_list("pk", flat=True)))
        return shown, (position.epoch, position.offset) if position else None

    return load


async def open_pages(stack: Hosts, rooms: list[Any], count: int) -> list[PageClient]:
    """``count`` pages spread over the rooms and the web processes, loaded and subscribed."""
    names = {room.pk: await asyncio.to_thread(lambda r=room: r.stream.signed_stream_name) for room in rooms}
    urls = stack.urls()
    pages = [
        PageClient(urls, rooms[n % len(rooms)], names[rooms[n % len(rooms)].pk], render(stack))
        for n in range(count)
    ]
    for batch in range(0, count, 100):  # pages open over a few seconds, not all at once
        group = pages[batch:batch + 100]
        await asyncio.gather(*(page.load() for page in group))
        for n, page in enumerate(group):
            page.start(urls[(batch + n) % len(urls)])
        await asyncio.wait_for(asyncio.gather(*(page.subscribed.wait() for page in group)), 60)
    return pages


async def save(room: Any, text: str) -> None:
    await asyncio.to_thread(MessageFactory, room=room, text=text)


Snapshot = Callable[[], Awaitable[list[tuple[int, set[int], list[str]]]]]
"""Every page's room pk, the message ids it shows and its refreshes, after its gap timer ran."""


async def wait_equal(pages: list[PageClient] | Snapshot, bound: float = SETTLE_S) -> float:
    """Seconds until every page (in this process, or as a :data:`Snapshot` of pages elsewhere)
    shows its room's messages in the database; fails past ``bound``."""
    snapshot = pages if callable(pages) else in_process(pages)
    start = time.monotonic()
    expected: dict[int, set[int]] = {}
    while True:
        shown = await snapshot()
        for pk in {room for room, _, _ in shown}:
            expected[pk] = await asyncio.to_thread(
                lambda pk=pk: set(Message.objects.filter(room_id=pk).values_list("pk", flat=True))
            )
        wrong = [(room, ids, refreshes) for room, ids, refreshes in shown if ids != expected[room]]
        if not wrong:
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            room, ids, refreshes = wrong[0]
            raise AssertionError(
                f"{len(wrong)} of {len(shown)} pages differ from the database after {bound} s; e.g. room "
                f"{room}: missing {sorted(expected[room] - ids)}, extra {sorted(ids - expected[room])}; "
                f"refreshes {refreshes}"
            )
        await asyncio.sleep(0.2)


def in_process(pages: list[PageClient]) -> Snapshot:
    async def snapshot() -> list[tuple[int, set[int], list[str]]]:
        for page in pages:
            await page.tick()
        return [(page.room.pk, page.shown, page.stats.refreshes) for page in pages]

    return snapshot


async def close_all(pages: list[PageClient]) -> None:
    await asyncio.gather(*(page.stop() for page in pages))


def refreshed(pages: list[PageClient]) -> list[PageClient]:
    return [page for page in pages if page.stats.refreshes]


# -- shards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["killed and restarted empty", "flushed"])
def test_a_shard_lost_refreshes_only_the_pages_of_its_streams(live_hosts: Hosts, fault: str) -> None:
    """Two rooms on each shard, 60 pages over three web processes. Shard 1 is killed (restarted
    empty 3 s later) or flushed while each room gets a message: every page equals the database,
    and, with the pub/sub layer, no page of a shard-0 room refreshes."""
    rooms = rooms_on_both_shards(live_hosts, 2)

    async def scenario() -> None:
        pages = await open_pages(live_hosts, rooms, 60)
        try:
            for room in rooms:
                await save(room, "before")
            await wait_equal(pages)
            shard = live_hosts.shards[1]
            if fault == "flushed":
                shard.flushall()
            else:
                assert shard.process is not None
                shard.process.kill()
                shard.process.wait(10)
                shard.process = None
            for room in rooms:
                await save(room, f"during {fault}")
            if fault != "flushed":
                await asyncio.sleep(3)
                shard.start()
            for room in rooms:
                await save(room, "after")
            seconds = await wait_equal(pages)
            on_shard0 = [page for page in pages if live_hosts.shard_of(page.room) == 0]
            print(f"\nshard 1 {fault} ({current_layer()}): every page equals the database {seconds:.1f} s "
                  f"after the last save; {len(refreshed(pages))} of {len(pages)} pages refreshed, "
                  f"{len(refreshed(on_shard0))} of {len(on_shard0)} on shard 0")
            if current_layer() == "pubsub":
                # A pub/sub group lives wholly on its shard. The core layer places each web
                # process's channel apart from the groups (channels_redis), so a lost shard also
                # fails the sends to the processes whose channel it held, whatever the stream.
                assert refreshed(on_shard0) == [], [page.stats.refreshes for page in refreshed(on_shard0)]
        finally:
            await close_all(pages)

    asyncio.run(scenario())


def test_a_web_host_cut_from_one_shard_for_10_s(live_hosts: Hosts) -> None:
    """The line between web process 0 and shard 1 is cut for 10 s (nothing read either way, as a
    partition looks) while every room gets messages: afterwards every page, those of web 0
    included, equals the database."""
    rooms = rooms_on_both_shards(live_hosts, 2)

    async def scenario() -> None:
        pages = await open_pages(live_hosts, rooms, 60)
        try:
            for room in rooms:
                await save(room, "before")
            await wait_equal(pages)
            live_hosts.proxy.cut()
            cut = time.monotonic()
            n = 0
            while time.monotonic() - cut < 10:
                n += 1
                for room in rooms:
                    await save(room, f"cut {n}")
                await asyncio.sleep(1)
            live_hosts.proxy.mend()
            seconds = await wait_equal(pages)
            on_web0 = [page for page in pages if page.url == live_hosts.webs[0].ws_url]
            print(f"\nweb 0 cut from shard 1 for 10 s ({current_layer()}): every page equals the database "
                  f"{seconds:.1f} s after the line is mended; {len(refreshed(pages))} of {len(pages)} pages "
                  f"refreshed ({len(refreshed(on_web0))} of the {len(on_web0)} on web 0)")
        finally:
            await close_all(pages)

    asyncio.run(scenario())


# -- processes ------------------------------------------------------------------------------------


def test_a_rolling_restart_of_every_web_process_with_1000_pages(live_hosts: Hosts) -> None:
    """1,000 pages over three web processes and ten rooms, held by ``PAGE_PROCESSES`` child
    processes (:mod:`tests.pageswarm`), messages saved throughout (about 5 a second); each web
    process in turn is taken out of the balancer, stopped (SIGTERM), started again and put back.
    Every page equals the database afterwards with no frame lost, at most 1% of the pages refresh,
    and the reconnections' 95th percentile is within ``RECONNECT_P95_BOUND_S`` (issue 21's 2 s);
    reconnection attempts per second are printed."""
    with suppress():
        rooms = RoomFactory.create_batch(10)
    specs = [(room.pk, room.stream.broadcastable_stream_name, room.stream.signed_stream_name) for room in rooms]

    async def scenario() -> None:
        balanced = list(live_hosts.urls())
        pages = [(*specs[n % len(specs)], balanced[n % len(balanced)]) for n in range(ROLLING_CLIENTS)]
        swarms = [
            PageSwarm(
                f"hosts-pages{n}", live_hosts.webs[1].env, LOG_DIR, balanced, layer_backend(current_layer()),
                live_hosts.direct, pages[n::PAGE_PROCESSES],
            )
            for n in range(PAGE_PROCESSES)
        ]
        stop = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await save(random.choice(rooms), f"rolling {n}")
                await asyncio.sleep(0.2)

        async def snapshot() -> list[tuple[int, set[int], list[str]]]:
            states = [page for swarm in swarms for page in await swarm.state()]
            return [(page.room, page.shown, page.stats.refreshes) for page in states]

        async def balance(urls: list[str]) -> None:
            await asyncio.gather(*(swarm.urls(urls) for swarm in swarms))

        try:
            await asyncio.gather(*(swarm.start() for swarm in swarms))
            saving = asyncio.create_task(traffic())
            started = time.monotonic()
            try:
                for web in live_hosts.webs:
                    balanced.remove(web.ws_url)  # the balancer's health check takes it out first
                    await balance(balanced)
                    await asyncio.to_thread(web.stop)
                    await asyncio.to_thread(web.start)
                    await asyncio.to_thread(wait_for_port, web.port)
                    balanced.append(web.ws_url)
                    await balance(balanced)
                    await asyncio.sleep(2)
                await asyncio.sleep(2)
            finally:
                stop.set()
                await saving
            seconds = await wait_equal(snapshot, SETTLE_S)
            states = [page for swarm in swarms for page in await swarm.state()]
        finally:
            await asyncio.gather(*(swarm.stop() for swarm in swarms))
        reconnects = sorted(r for page in states for r in page.stats.reconnects)
        attempts = sorted(a - started for page in states for a in page.stats.attempts)
        per_second: dict[int, int] = {}
        for at in attempts:
            per_second[int(at)] = per_second.get(int(at), 0) + 1
        p95 = percentile(reconnects, 0.95)
        handshakes = sorted(h for page in states for h in page.stats.handshakes)
        refreshed_pages = [page for page in states if page.stats.refreshes]
        print(
            f"\nrolling restart of {WEBS} web processes, {len(states)} pages in {PAGE_PROCESSES} processes "
            f"({current_layer()}): {len(reconnects)} reconnections, p50 {statistics.median(reconnects):.2f} s, "
            f"p95 {p95:.2f} s (bound {RECONNECT_P95_BOUND_S} s), max {reconnects[-1]:.2f} s (of which the WebSocket "
            f"handshake: p50 {statistics.median(handshakes):.2f} s, p95 {percentile(handshakes, 0.95):.2f} s); "
            f"{len(refreshed_pages)} pages refreshed ({sorted({r for p in refreshed_pages for r in p.stats.refreshes})}); "
            f"equal {seconds:.1f} s after the last save; {sum(p.stats.applied for p in states)} frames applied, "
            f"{sum(p.stats.duplicates for p in states)} duplicates dropped\n"
            f"connection attempts per second since the first stop: {dict(sorted(per_second.items()))}"
        )
        assert len(reconnects) >= ROLLING_CLIENTS * 0.9  # every web process was restarted under its pages
        assert p95 <= RECONNECT_P95_BOUND_S
        assert len(refreshed_pages) <= ROLLING_CLIENTS // 100

    asyncio.run(scenario())


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted ``values`` lie (0 for none)."""
    return values[max(0, int(len(values) * fraction) - 1)] if values else 0.0


def test_a_worker_killed_mid_batch_while_the_other_runs(live_hosts: Hosts) -> None:
    """One transaction saves a slow probe (its hook sleeps 4 s) and 30 messages over six rooms: one
    batch task. The worker running it is SIGKILLed in the probe's hook; the other worker runs the
    batch again once its visibility timeout (3 s) has passed, and every page equals the database."""
    rooms = rooms_on_both_shards(live_hosts, 3)

    async def scenario() -> None:
        from django.db import transaction

        pages = await open_pages(live_hosts, rooms, 60)
        logs = [LogSince(worker) for worker in live_hosts.workers]
        try:
            def burst() -> int:
                with transaction.atomic():
                    probe = ProbeFactory(sleep=4)
                    for n in range(30):
                        MessageFactory(room=rooms[n % len(rooms)], text=f"batch {n}")
                return int(probe.pk)

            probe_pk = await asyncio.to_thread(burst)
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(lambda: ProbeRun.objects.filter(probe_id=probe_pk).exists()):
                assert time.monotonic() < deadline, "no worker started the batch"
                await asyncio.sleep(0.05)
            running = [n for n, log in enumerate(logs) if "turbo_async.batch" in log.text() or "ProbeStream" in log.text()]
            assert len(running) == 1, [log.text()[-500:] for log in logs]
            killed = live_hosts.workers[running[0]]
            killed.kill()
            seconds = await wait_equal(pages, SETTLE_S)
            print(f"\nworker killed mid-batch ({current_layer()}): every page equals the database "
                  f"{seconds:.1f} s after the kill; {len(refreshed(pages))} of {len(pages)} pages refreshed")
        finally:
            await close_all(pages)

    asyncio.run(scenario())
