"""Metrics seen from outside: Debian's Prometheus server scrapes a real uvicorn (``/metrics``
through tests/asgi.py's routing) and a real prefork Celery worker (``METRICS_PORT``, two pool
processes in prometheus_client's multiprocess mode) while this process commits saves; the test
asks Prometheus' HTTP API for the lag histogram and the frame counts. Then ``manage.py
turbo_streams --status``, run as a separate process against the same Redis, reports the web
process and the worker, and says so when nothing runs.

Everything here runs on a stack of the module's own (broker and layer Redis, worker, uvicorn):
the counts Prometheus holds are this module's alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOG_DIR
from tests.services import (
    ROOT,
    CeleryWorker,
    FaultStack,
    LogSince,
    PrometheusServer,
    RedisServer,
    StreamClient,
    free_port,
    subprocess_env,
    subscribed,
)
from tests.testapp.factories import MessageFactory, ProbeFactory, RoomFactory
from turbo_async import suppress

pytestmark = pytest.mark.integration

SETTINGS: dict[str, Any] = {"METRICS": True, "STATUS_INTERVAL": 0.5}
SAVES = 5
CLIENTS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, django_db_setup: None) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("metrics")
    worker_port = free_port()
    stack = FaultStack(root, LOG_DIR, "metrics", {**SETTINGS, "METRICS_PORT": worker_port})
    shared = root / "worker-metrics"
    shared.mkdir()
    # Two pool processes write their metrics to files; the worker's main process serves the sum.
    stack.worker = CeleryWorker(
        LOG_DIR, name="metrics-worker", concurrency=2, **(stack.env | {"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    )
    stack.worker_port = worker_port  # type: ignore[attr-defined]
    with stack.serving():
        yield stack


@pytest.fixture(scope="module")
def prometheus(stack: FaultStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"), LOG_DIR,
        {"web": f"127.0.0.1:{stack.web.port}", "worker": f"127.0.0.1:{stack.worker_port}"},  # type: ignore[attr-defined]
        rules=ROOT / "docs" / "prometheus" / "alerts.yml",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def publishing(settings: Any, transactional_db: None) -> Iterator[None]:
    """This process commits and publishes for real, with metrics on (the commit time travels)."""
    from workers import app

    settings.TURBO_ASYNC = SETTINGS
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True


def test_prometheus_scrapes_the_lag_and_the_frames(
    stack: FaultStack, prometheus: PrometheusServer, publishing: None
) -> None:
    with suppress():
        room = RoomFactory()
    with subscribed(stack.web, room.stream.signed_stream_name) as client:
        positions = []
        for number in range(SAVES):
            MessageFactory(room=room, text=f"metrics {number}")
            frame = client.receive()
            assert f"metrics {number}" in frame["data"]
            positions.append((frame["epoch"], frame["offset"]))
        # Every frame written carried its commit time: one lag observation each.
        prometheus.wait_value('sum(turbo_async_broadcast_lag_seconds_count{job="web"})', SAVES)
        prometheus.wait_value('sum(turbo_async_frames_sent_total{job="web"})', SAVES)
        prometheus.wait_value('sum(turbo_async_broadcasts_total{job="worker", hook="testapp.message.on_save"})', SAVES)
        prometheus.wait_value('sum(turbo_async_batch_size_count{job="worker"})', SAVES)
        assert prometheus.value('turbo_async_sockets{job="web"}') == 1
        assert prometheus.value('turbo_async_subscriptions{job="web"}') == 1
        assert prometheus.targets_up() == {"web": "up", "worker": "up"}
        lag_sum = prometheus.value('sum(turbo_async_broadcast_lag_seconds_sum{job="web"})')
        assert lag_sum is not None and lag_sum > 0
        bytes_sent = prometheus.value('sum(turbo_async_bytes_sent_total{job="web"})')
        assert bytes_sent is not None and bytes_sent > SAVES * len('{"signed_channel_name": ')
        # The p99 Prometheus computes from the buckets (the alert in docs/monitoring.rst takes it
        # over a rate) lies within them.
        p99 = prometheus.value('histogram_quantile(0.99, sum by (le) (turbo_async_broadcast_lag_seconds_bucket{job="web"}))')
        assert p99 is not None and 0 < p99 <= 60
        assert prometheus.value('sum(turbo_async_render_seconds_count{job="worker"})') == SAVES
        # Every publication was numbered in Redis and sent (a recheck may add sends, never fewer).
        for timing in ("send_seconds", "history_append_seconds"):
            count = prometheus.value(f'sum(turbo_async_{timing}_count{{job="worker"}})')
            assert count is not None and count >= SAVES, timing
        # A subscription with a forged name is refused, and counted by its reason.
        client.subscribe("forged")
        assert client.receive()["type"] == "error"
        prometheus.wait_value('sum(turbo_async_refused_subscriptions_total{reason="invalid_signature"})', 1)
    # A page that saw only the first frame resubscribes: the others are replayed from the history.
    late = StreamClient(stack.web.ws_url, stack.web.origin)
    try:
        epoch, offset = positions[0]
        late.send_raw(json.dumps({
            "type": "subscribe", "signed_channel_name": room.stream.signed_stream_name, "epoch": epoch, "offset": offset,
        }))
        assert late.receive()["type"] == "subscribed"
        replayed = [late.receive()["offset"] for _ in range(SAVES - 1)]
        assert replayed == [offset for _, offset in positions[1:]]
        prometheus.wait_value('sum(turbo_async_replays_total{job="web"})', 1)
        prometheus.wait_value('sum(turbo_async_replayed_frames_total{job="web"})', SAVES - 1)
    finally:
        late.close()
    # A hook that raises fails its task in a pool process, and is counted.
    ProbeFactory(fail=True)
    prometheus.wait_value('sum(turbo_async_hook_errors_total{job="worker"})', 1)
    # The example alerts of docs/monitoring.rst load and evaluate against these metrics.
    deadline = time.monotonic() + 30
    while set((health := prometheus.rules_health()).values()) != {"ok"}:
        assert time.monotonic() < deadline, health
        time.sleep(0.25)
    assert set(health) == {"TurboAsyncBroadcastLagHigh", "TurboAsyncOutboxStuck", "TurboAsyncSubscriptionsRefused"}
    prometheus.wait_value('turbo_async_sockets{job="web"}', 0)
    prometheus.wait_value('turbo_async_subscriptions{job="web"}', 0)
    prometheus.wait_value('sum(turbo_async_closes_total{job="web"})', 2)


def status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "turbo_streams", "--status", "--timeout", "3"],
        cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )


def test_status_reports_the_web_process_and_the_worker(stack: FaultStack, publishing: None) -> None:
    assert stack.web.process is not None
    with suppress():
        room = RoomFactory()
    with subscribed(stack.web, room.stream.signed_stream_name) as client:
        MessageFactory(room=room, text="status")
        client.receive_frames()
        row = f"{os.uname().nodename}:{stack.web.process.pid} "
        deadline = time.monotonic() + 30
        while True:
            done = status(stack.env)
            line = next((line for line in done.stdout.splitlines() if line.startswith(row)), "")
            # Process, sockets, subscriptions, frames/min, lag p50, lag p99, outbox, oldest
            if line.split()[1:3] == ["1", "1"]:
                break
            assert time.monotonic() < deadline, done.stdout + done.stderr
            time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    assert "Web processes: 1 (each reports every 0.5 s)" in done.stdout
    fields = line.split()
    assert int(fields[3]) >= 1  # this test's frame, within the last minute
    assert fields[4] != "-" and fields[4 + 2] != "-"  # "12.5 ms": a value and its unit each
    assert "Workers: 1 worker answered a ping (metrics-worker-" in done.stdout
    assert "0 tasks waiting in the queue 'celery'" in done.stdout


def test_status_says_when_nothing_runs(tmp_path: Path) -> None:
    redis = RedisServer(free_port(), tmp_path / "redis")
    redis.start()
    try:
        done = status({
            "TURBO_TEST_REDIS_PORT": str(redis.port), "TURBO_TEST_LAYER_REDIS_PORT": str(redis.port),
            "TURBO_TEST_TURBO_ASYNC": '{"METRICS": true}',
        })
    finally:
        redis.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Web processes: none reported to Redis." in done.stdout
    assert "Workers: none answered a ping within 1 s; 0 tasks waiting in the queue 'celery'" in done.stdout
    assert "CommandError: Nothing is running: no web process reported and no worker answered." in done.stderr



def scrape(url: str) -> dict[str, float]:
    """``/metrics`` of a web process: each sample without labels, by name."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples if not sample.labels
    }


def test_uvicorn_workers_serve_the_sum_of_their_processes(
    tmp_path_factory: pytest.TempPathFactory, publishing: None
) -> None:
    """``uvicorn --workers 2`` in multiprocess mode: whichever process answers ``/metrics`` serves
    the sockets and frames of both (frames are flushed by the other process within 5 s)."""
    root = tmp_path_factory.mktemp("web-workers")
    shared = root / "web-metrics"
    shared.mkdir()
    stack = FaultStack(root, LOG_DIR, "metrics-workers", SETTINGS, PROMETHEUS_MULTIPROC_DIR=str(shared))
    stack.worker = CeleryWorker(LOG_DIR, name="metrics-workers-worker", pool="solo", **stack.env)
    stack.web.args += ["--workers", "2"]
    with stack.serving():
        with suppress():
            room = RoomFactory()
        url = f"http://127.0.0.1:{stack.web.port}/metrics"
        clients = [subscribed(stack.web, room.stream.signed_stream_name) for _ in range(CLIENTS)]
        opened = [client.__enter__() for client in clients]
        try:
            MessageFactory(room=room, text="to every process")
            for client in opened:
                client.receive_frames()
            pids = {path.name.split("_")[-1] for path in shared.glob("*.db")}
            deadline = time.monotonic() + 30
            while (found := scrape(url)).get("turbo_async_frames_sent_total") != CLIENTS:
                assert time.monotonic() < deadline, (found, sorted(path.name for path in shared.iterdir()))
                time.sleep(0.25)
            assert found["turbo_async_sockets"] == CLIENTS
            assert found["turbo_async_subscriptions"] == CLIENTS
            assert found["turbo_async_broadcast_lag_seconds_count"] == CLIENTS
            # Each process reports its own share to --status.
            deadline = time.monotonic() + 30
            while True:
                host = f"{os.uname().nodename}:"
                rows = [line.split() for line in status(stack.env).stdout.splitlines() if line.startswith(host)]
                shares = [int(row[1]) for row in rows]
                if sum(shares) == CLIENTS:
                    break
                assert time.monotonic() < deadline, rows
                time.sleep(0.5)
        finally:
            for client in clients:
                client.__exit__(None, None, None)
    # Both uvicorn processes wrote metrics: the sum above is of two processes (the kernel hands
    # each connection, sockets and scrapes alike, to either).
    assert len(pids) >= 2, pids
    # One row per process holding sockets: the kernel may hand every socket to one of them.
    assert 1 <= len(shares) <= 2 and sum(shares) == CLIENTS, rows



def test_a_prefork_worker_without_a_multiprocess_directory_says_what_to_set(
    tmp_path: Path, django_db_setup: None
) -> None:
    """Its pool processes would keep their metrics to themselves: the worker says so at start."""
    broker = RedisServer(free_port(), tmp_path / "broker")
    broker.start()
    worker = CeleryWorker(
        LOG_DIR, name="metrics-no-dir-worker", concurrency=1, pool="prefork",
        TURBO_TEST_TURBO_ASYNC=json.dumps({**SETTINGS, "METRICS_PORT": free_port()}),
        TURBO_TEST_REDIS_PORT=str(broker.port),
    )
    worker.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    since = LogSince(worker)
    worker.start()
    try:
        # logged by the worker_ready handler, around the " ready." line
        since.wait_for(
            "this worker's pool processes keep their metrics to themselves: set PROMETHEUS_MULTIPROC_DIR "
            "to an empty directory before starting the worker (docs/monitoring.rst), or use --pool solo"
        )
    finally:
        worker.stop()
        broker.stop()



def test_a_worker_whose_metrics_port_is_taken_says_so_and_runs(tmp_path: Path, django_db_setup: None) -> None:
    import socket

    broker = RedisServer(free_port(), tmp_path / "broker")
    broker.start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = CeleryWorker(
            LOG_DIR, name="metrics-taken-worker", pool="solo",
            TURBO_TEST_TURBO_ASYNC=json.dumps({**SETTINGS, "METRICS_PORT": port}),
            TURBO_TEST_REDIS_PORT=str(broker.port),
        )
        since = LogSince(worker)
        worker.start()
        try:
            since.wait_for(f"could not serve this worker's metrics on 127.0.0.1:{port} (")
            assert worker.process is not None and worker.process.poll() is None  # still consuming
        finally:
            worker.stop()
            broker.stop()


# The docs show this screenshot; a run writes it there only when asked (TURBO_UPDATE_SCREENSHOTS=1).
SCREENSHOT = (
    ROOT / "docs" / "_static" if os.environ.get("TURBO_UPDATE_SCREENSHOTS") == "1" else Path(os.environ["TURBO_TEST_TMP"])
) / "prometheus-lag.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.mark.browser
def test_prometheus_graphs_the_frames_and_the_lag(
    stack: FaultStack, prometheus: PrometheusServer, publishing: None
) -> None:
    """Prometheus' own graph page of the frames and the lag p99 after a save a second for 15 s,
    taken by Chromium for docs/monitoring.rst. Last in the module: Playwright's sync API leaves
    the thread looking async to Django, and nothing after it here touches the database."""
    if not Path(CHROMIUM).exists():
        raise AssertionError("Chromium is missing: apt-get install chromium (or make system-deps)")
    with suppress():
        room = RoomFactory()
    with subscribed(stack.web, room.stream.signed_stream_name) as client:
        for number in range(15):
            MessageFactory(room=room, text=f"graphed {number}")
            client.receive_frames()
            time.sleep(1)  # spread over the graph's range (nothing timed is asserted)
    from urllib.parse import urlencode

    from playwright.sync_api import expect, sync_playwright

    query = urlencode({
        "g0.expr": "sum(turbo_async_frames_sent_total)", "g0.tab": "0", "g0.range_input": "30s",
        "g1.expr": "histogram_quantile(0.99, sum by (le) (rate(turbo_async_broadcast_lag_seconds_bucket[30s])))",
        "g1.tab": "0", "g1.range_input": "30s",
    })
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            # Debian's prometheus ships the classic UI (Rickshaw graphs), not the React one.
            page.goto(f"{prometheus.url}/classic/graph?{query}")
            expect(page.locator(".graph.rickshaw_graph svg")).to_have_count(2, timeout=20_000)
            # a line in each: the series have points
            assert page.locator(".graph.rickshaw_graph svg path").count() >= 2
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
