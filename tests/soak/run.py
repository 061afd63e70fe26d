"""The soak (issue 23; ``make soak``, ``make soak-short``; docs/soak.rst).

Real processes throughout: a PostgreSQL server, a broker Redis and a channel-layer Redis
(redis-server), two Celery workers, three uvicorn web processes, a writer process making
creates, updates and deletes through the ORM at ``RATE`` a second (:mod:`tests.soak.writer`), and
``PAGES`` pages of ``STREAMS`` rooms in client processes (:mod:`tests.soak.pages`), each checking
its own stream. The pages churn (a fifth reconnect each minute) and jitter (about every 15 s a
tenth of the open sockets is reset without a close frame); a worker is restarted at 40% of the
run and a web process at 65%. Memory and keys are sampled every ``SAMPLE_EVERY_S``
(:mod:`tests.soak.sampler`). At the end the writer stops, the pages settle, and the table is
printed; with ``--plots`` the figures go to docs/_static/.

``python -m tests.soak.run [--duration S] [--short] [--plots]``; ``DURATION`` (seconds) in the
environment too. Exit status 1 when a check fails: a silent gap (offsets neither applied nor
covered by a refresh, or a page that differs from the database), an order violation, a
duplicate, or a memory or key series whose trend over the last 80% of the run is over the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.services import (
    CeleryWorker,
    PostgresServer,
    Process,
    RedisServer,
    Uvicorn,
    free_port,
    subprocess_env,
    wait_for_port,
)
from tests.soak import sampler

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(os.environ.get("SOAK_RUNS", "/tmp/turbo-soak-runs"))
STREAMS = 50
PAGES = 500
RATE = 50.0
CHURN_PER_MINUTE = 0.2
DROP_EVERY_S = 15.0
DROP_FRACTION = 0.1
WEBS = 3
WORKERS = 2
SETTLE_S = 60.0
SETTINGS = {"METRICS": True, "STATUS_INTERVAL": 5.0}
WORKER_RESTART_AT = 0.4
WEB_RESTART_AT = 0.65


class Soak:
    def __init__(self, directory: Path, layer: str, clients: int, pages: int) -> None:
        self.dir = directory
        self.logs = directory / "logs"
        self.control = directory / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresServer(free_port(), directory / "postgres")
        self.broker = RedisServer(free_port(), directory / "broker")
        self.layer = RedisServer(free_port(), directory / "layer")
        self.clients = clients
        self.pages = pages
        self.env = {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TURBO_TEST_SUBPROCESS": "1",
            "TURBO_TEST_TMP": str(directory),
            "TURBO_TEST_DATABASE": "postgres",
            "TURBO_TEST_PG_PORT": str(self.postgres.port),
            "TURBO_TEST_REDIS_PORT": str(self.broker.port),
            "TURBO_TEST_LAYER_REDIS_PORT": str(self.layer.port),
            "TURBO_TEST_LAYER": layer,
            "TURBO_TEST_TURBO_ASYNC": json.dumps(SETTINGS),
            "TURBO_TEST_VISIBILITY_TIMEOUT": "10",
        }
        os.environ.update(self.env)  # this process: the rooms, the database comparison
        self.workers = [CeleryWorker(self.logs, name=f"worker{n}", concurrency=2, **self.env) for n in range(WORKERS)]
        self.webs = [Uvicorn(self.logs, name=f"web{n}", **self.env) for n in range(WEBS)]
        self.writer: Process | None = None
        self.client_processes: list[Process] = []

    def processes(self) -> dict[str, Process]:
        return {**{w.name: w for w in self.workers}, **{w.name: w for w in self.webs},
                **({"writer": self.writer} if self.writer else {})}

    def start(self) -> list[int]:
        self.postgres.start()
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.postgres.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            for name in ("turbo_async_default", "turbo_async_other"):
                connection.execute(f"CREATE DATABASE {name}")
        self.broker.start()
        self.layer.start()
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        from tests.testapp.models import Room

        rooms = [Room.objects.create(name=f"soak {n}").pk for n in range(STREAMS)]
        fill_histories(Room.objects.filter(pk__in=rooms))
        for process in [*self.workers, *self.webs]:
            process.start()
        return rooms

    def start_clients(self, rooms: list[int], **overrides: Any) -> None:
        """The client processes, each with its share of the pages, until all are subscribed.
        ``overrides``: keys of their configuration (``first_url``: where every page connects
        first; ``urls``: where they reconnect)."""
        for index in range(self.clients):
            config = {
                "urls": [web.ws_url for web in self.webs], "rooms": rooms, "pages": self.pages // self.clients + (index < self.pages % self.clients),
                "index": index, "processes": self.clients, "churn_per_minute": CHURN_PER_MINUTE,
                "drop_every": DROP_EVERY_S, "drop_fraction": DROP_FRACTION, "control": str(self.control),
                "result": str(self.dir / f"client{index}.json"), "layer_url": self.layer.url, "settle_s": SETTLE_S,
                **overrides,
            }
            path = self.dir / f"client{index}.config.json"
            path.write_text(json.dumps(config))
            process = Process(f"client{index}", [sys.executable, "-m", "tests.soak.pages", str(path)], self.logs,
                              subprocess_env(**self.env))
            process.start()
            self.client_processes.append(process)
        deadline = time.monotonic() + 180
        while len(list(self.control.glob("ready-*"))) < self.clients:
            for process in self.client_processes:
                if process.process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the pages did not open within 180 s")
            time.sleep(0.5)

    def start_writer(self, rooms: list[int], rate: float = RATE) -> None:
        self.writer = Process(
            "writer", [sys.executable, "-m", "tests.soak.writer", str(self.dir / "writer.json"), str(rate),
                       *map(str, rooms)],
            self.logs, subprocess_env(**self.env),
        )
        self.writer.start()

    def writer_status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / "writer.json").read_text()))
        except (OSError, ValueError):
            return {}

    def stop_writer(self) -> dict[str, Any]:
        assert self.writer is not None and self.writer.process is not None
        self.writer.process.terminate()
        self.writer.process.wait(60)
        return self.writer_status()

    def wait_drained(self, timeout: float = 300) -> None:
        """Until the broker's queue is empty and the workers have had a moment to send."""
        redis = self.broker.client()
        deadline = time.monotonic() + timeout
        while redis.llen("celery") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)

    def results(self, timeout: float) -> list[dict[str, Any]]:
        (self.control / "settle").touch()
        deadline = time.monotonic() + timeout
        found = []
        for index, process in enumerate(self.client_processes):
            path = self.dir / f"client{index}.json"
            while not path.exists():
                if process.process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{process.name} did not settle within {timeout} s")
                time.sleep(0.5)
            found.append(json.loads(path.read_text()))
        return found

    def stop(self) -> None:
        for process in [*self.client_processes, *([self.writer] if self.writer else []), *self.webs, *self.workers]:
            try:
                process.stop()
            except Exception as exc:
                print(f"stopping {process.name}: {exc!r}", file=sys.stderr)
        for server in (self.layer, self.broker, self.postgres):
            try:
                server.stop()
            except Exception as exc:
                print(f"stopping a server: {exc!r}", file=sys.stderr)


def fill_histories(rooms: Any) -> None:
    """Every stream's history at its limit (``HISTORY_SIZE`` batches of a message's frame) before the
    run: a deployment that runs for days has full histories, and a soak of minutes would otherwise
    spend its first ~100 s filling them, a growth the memory check would read as a trend."""
    import asyncio

    from channels.layers import get_channel_layer
    from django.template.loader import render_to_string
    from django.utils import timezone

    from tests.testapp.models import Message
    from turbo_async import conf, frames, history

    layer = get_channel_layer()
    sample = Message(id=10**5, text="soak 10000", created_at=timezone.now())  # as the writer's
    html = render_to_string("testapp/message.html", {"message": sample})
    data = str(frames.frame_markup("append", target="messages", html=html))

    groups = [room.stream.broadcastable_stream_name for room in rooms]

    async def fill() -> None:
        for group in groups:
            for _ in range(conf.get().HISTORY_SIZE):
                await history.append(layer, group, data)

    asyncio.run(fill())


def restart(process: Process) -> float:
    """SIGTERM, then start again; the seconds it took."""
    started = time.monotonic()
    process.stop()
    process.start()
    if isinstance(process, Uvicorn):
        wait_for_port(process.port)
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if key == "settle_s":
                total[key] = max(total.get(key, 0.0), value)
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                merged = total.setdefault(key, {})
                for name, count in value.items():
                    merged[name] = merged.get(name, 0) + count
    return total


def report(total: dict[str, Any], writer: dict[str, Any], events: list[str], duration: float) -> list[str]:
    """The table; returns the failed checks."""
    silent = total["expected"] - total["delivered"] - total["covered"]
    replays = total["replays"]
    reconnects = total["reconnects"]
    rows = [
        ("duration", f"{duration:.0f} s"),
        ("changes (create / update / delete)",
         f"{writer.get('create', 0)} / {writer.get('update', 0)} / {writer.get('delete', 0)}"
         f" ({writer.get('failed', 0)} failed), {sum(writer.get(k, 0) for k in ('create', 'update', 'delete')) / duration:.1f}/s"),
        ("pages", f"{total['pages']} over {STREAMS} streams"),
        ("clean reconnects (churn) / sockets reset (jitter)", f"{total['churned']} / {total['dropped']}"),
        ("frames (offsets) expected", f"{total['expected']}"),
        ("  delivered", f"{total['delivered']} ({100 * total['delivered'] / max(1, total['expected']):.3f}%)"),
        ("  covered by a refresh", f"{total['covered']}"),
        ("  silent gaps (neither; goal 0)", f"{silent}"),
        ("pages behind their stream after settling (goal 0)", f"{len(total['silent'])}"),
        ("pages unlike the database after settling (goal 0)", f"{len(total['mismatched'])}"),
        ("order violations: frames applied out of order (goal 0)", f"{total['order_violations']}"),
        ("duplicates: offsets applied twice (goal 0)", f"{total['applied_duplicates']}"),
        ("duplicate arrivals, dropped by the client (goal 0)", f"{total['duplicates']}"),
        ("  stale frames after a page's own refresh (not counted)", f"{total['stale']}"),
        ("arrivals out of order, put in order by the client", f"{total['arrived_ahead']}"),
        ("frames without an offset", f"{total['unnumbered']}"),
        ("reconnections", f"{len(reconnects)}: p50 {percentile(reconnects, 0.5):.2f} s, "
                          f"p99 {percentile(reconnects, 0.99):.2f} s, max {max(reconnects, default=0):.2f} s"),
        ("replays (missed frames resent)", f"{len(replays)}: p50 {percentile(replays, 0.5):.2f} s, "
                                           f"p99 {percentile(replays, 0.99):.2f} s (from the socket closing to caught up)"),
        ("  replays that ended in a refresh", f"{total['replays_refreshed']}"),
        ("refreshes", ", ".join(f"{n} {reason}" for reason, n in sorted(total["refreshes"].items())) or "none"),
        ("pages settled in (slowest client process)", f"{total['settle_s']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nsoak: " + "; ".join(events))
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for line in total["silent"][:5] + total["mismatched"][:5] + total["notes"][:20]:
        print(f"    {line}")
    failed = []
    if silent or total["silent"] or total["mismatched"]:
        failed.append("silent gaps")
    if total["order_violations"]:
        failed.append("order violations")
    if total["duplicates"] or total["applied_duplicates"]:
        failed.append("duplicates")
    if writer.get("failed"):
        failed.append("writer failures")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", "600")))
    parser.add_argument("--short", action="store_true", help="CI: no plots")
    parser.add_argument("--plots", type=Path, default=None, help="directory of the PNG figures")
    parser.add_argument("--layer", default=os.environ.get("TURBO_TEST_LAYER", "pubsub"))
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--pages", type=int, default=PAGES)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = RUNS / f"{stamp}-{int(args.duration)}s"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.duration:.0f} s, {args.pages} pages, {STREAMS} streams, {RATE:.0f} changes/s, "
          f"{args.layer} layer; logs and samples in {directory}", flush=True)
    soak = Soak(directory, args.layer, args.clients, args.pages)
    events: list[str] = []
    try:
        rooms = soak.start()
        soak.start_clients(rooms)
        soak.start_writer(rooms)
        started = time.monotonic()
        watch = sampler.Sampler(soak, started, args.sample_every)
        watch.start()
        schedule = [(WORKER_RESTART_AT * args.duration, soak.workers[1]), (WEB_RESTART_AT * args.duration, soak.webs[2])]
        while time.monotonic() - started < args.duration:
            now = time.monotonic() - started
            if schedule and now >= schedule[0][0]:
                _, process = schedule.pop(0)
                seconds = restart(process)
                events.append(f"{process.name} restarted at {now:.0f} s (took {seconds:.1f} s; Unix time {time.time():.0f})")
                watch.restarted(process.name, now)
                print(f"  {events[-1]}", flush=True)
            time.sleep(0.5)
            if int(now) % 60 == 0 and now >= 1:
                status = soak.writer_status()
                print(f"  {now:.0f} s: {status}", flush=True)
                time.sleep(1)
        (soak.control / "calm").touch()
        writer = soak.stop_writer()
        watch.stop()
        soak.wait_drained()
        results = soak.results(SETTLE_S + 120)
    finally:
        soak.stop()
    total = merge(results)
    duration = args.duration
    failed = report(total, writer, events, duration)
    trend = watch.check()
    failed += trend
    (directory / "result.json").write_text(json.dumps(
        {"total": total, "writer": writer, "events": events, "started": started, "duration": duration}))
    watch.save(directory / "samples.json")
    if args.plots is not None:
        from tests.soak import plots

        plots.draw(watch.samples, watch.restarts, total, started, args.plots, args.duration)
    print(f"soak: {'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
