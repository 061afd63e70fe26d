"""``make bench``: every benchmark in one run, on this machine, printed as one table.

Starts a Redis server and a throwaway PostgreSQL server (Debian's, as the tests do), creates the
turbo-django 0.4.4 venv (tests/benchmarks/.env) if needed, then runs each variant in its own
process (see bench_*.py) and prints medians and ratios as a reST table (docs/benchmarks.rst shows
one). The request path is measured for both of turbo_async's outboxes (``OUTBOX`` "memory" and
"database"), on SQLite and on PostgreSQL. The worker drains 10,000 changes batched (as the outbox
sends them under load) and one task per change, against a raw loop. The fan-out latency runs each
case of ``BENCH_LATENCY_CASES`` with each channels_redis layer of ``BENCH_LAYERS``, for turbo_async
and for turbo-django (in its venv). Offsets and history (bench_history.py): worker broadcasts/s
with history writes on and off, and the catch-up time of 100 missed frames. Metrics
(``TURBO_ASYNC["METRICS"]``), on against off, paired (bench_metrics.py): ``METRICS_ROUNDS`` rounds
of two workers draining the same changes side by side, and of the fan-out of ``METRICS_CASE``
served by two web processes at once, one with metrics on; each row the median over the rounds of
on against off of the same round; and the cost of the metrics calls alone against the CPU a change
or a frame costs (bench_metrics_calls.py) (``BENCH_ONLY=metrics`` runs these rows alone). At scale
(issue 22, :func:`scale_runs`, their own table; ``BENCH_ONLY=avalanche``, ``memory`` or
``bigroom`` runs one alone): 2,000 sockets x 100 subscriptions arriving at once at one web process
under each layer, the RSS of 10,000 idle sockets, and one stream x 10,000 subscribers over 4 web
processes beside the floor. Nothing timed is asserted: the figures are printed, and the goals'
"Met" column only reports them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.benchmarks import bench_history  # noqa: E402
from tests.benchmarks.common import read_result  # noqa: E402
from tests.services import (  # noqa: E402
    PostgresServer,
    RedisServer,
    free_port,
    postgres_binaries,
    redis_server_binary,
)

TURBO_DJANGO_ENV = ROOT / "tests" / "benchmarks" / ".env"
REQUEST_METRICS = ("create_ms", "paced_create_ms", "tx_ms", "commit_ms", "drained_ms", "load_ms")
LATENCY_CASES = os.environ.get("BENCH_LATENCY_CASES", "1x200@50,1x1000@10,10x20@50")
"""The fan-out cases: ``ROOMSxSUBSCRIBERS_PER_ROOM@SAVES_PER_SECOND``, comma-separated."""
LATENCY_GOALS = {"1x200@50": 20.0, "1x1000@10": 100.0, "10x20@50": 10.0}
"""Issue 13's p99 goals, ms, by case."""
LAYERS = os.environ.get("BENCH_LAYERS", "core,pubsub").split(",")
"""The channels_redis layers the fan-out is measured with (settings.py's ``BENCH_LAYER``)."""
ROUNDS = 3
METRICS_CASE = os.environ.get("BENCH_METRICS_CASE", "1x200@50")
METRICS_ROUNDS = int(os.environ.get("BENCH_METRICS_ROUNDS", "6"))
METRICS_GOAL = 0.03
"""Issue 24: metrics may cost at most 3% of worker throughput and of the fan-out p99."""
SCALE_ONLY = ("avalanche", "memory", "bigroom")
"""The ``BENCH_ONLY`` values of the rows at scale (issue 22)."""
AVALANCHE_GOAL_S = 60.0
MEMORY_GOAL_KB = 50.0
BIGROOM = os.environ.get("BENCH_BIGROOM", "1x10000@2")
"""The big room: ``ROOMSxSUBSCRIBERS@SAVES_PER_SECOND``, over ``BIGROOM_WEBS`` web processes."""
BIGROOM_SECONDS = os.environ.get("BENCH_BIGROOM_SECONDS", "50")
BIGROOM_LAYER = os.environ.get("BENCH_BIGROOM_LAYER", "pubsub")
BIGROOM_WEBS = "4"
BIGROOM_GOAL_MS = 880.0
"""Issue 22: AnyCable's published p99 for one stream x 10,000 subscribers at 2 messages/s."""
"""Processes of each request variant compared within one database, alternating, whose medians
are taken: one process's figures move by more than the outboxes differ on a loaded machine."""


def turbo_django_python() -> Path:
    """The interpreter of a venv with turbo-django 0.4.4 and the same Django/Channels/Redis
    versions as the project's venv, created on first use."""
    pins = [
        "turbo-django==0.4.4",
        *(
            f"{name}=={importlib.metadata.version(name)}"
            for name in ("Django", "channels", "channels-redis", "redis", "psycopg")
        ),
        # its PostgreSQL driver, the project's own version (psycopg[binary] is a test dependency)
        f"psycopg-binary=={importlib.metadata.version('psycopg-binary')}",
        # the latency benchmark's web processes and subscribers, as for turbo_async
        *(f"{name}=={importlib.metadata.version(name)}" for name in ("uvicorn", "websockets")),
    ]
    python = TURBO_DJANGO_ENV / "bin" / "python"
    stamp = TURBO_DJANGO_ENV / "requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == "\n".join(pins)):
        print(f"Creating {TURBO_DJANGO_ENV.relative_to(ROOT)} with {' '.join(pins)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TURBO_DJANGO_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
        stamp.write_text("\n".join(pins))
    return python


def run(module: str, env: dict[str, str], python: str | Path = sys.executable, *args: str) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [str(python), "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=400,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = read_result(done.stdout)
    where = f"{env.get('BENCH_DATABASE', 'sqlite')} OUTBOX={env.get('BENCH_OUTBOX', 'memory')}"
    if module.endswith("bench_latency"):
        where = (
            f"layer={env.get('BENCH_LAYER', 'core')} {env['BENCH_ROOMS']} rooms x "
            f"{env['BENCH_SUBSCRIBERS']} at {env['BENCH_RATE']}/s"
        )
    print(f"  {module} {env['BENCH_VARIANT']} {where} {' '.join(args)}: {time.monotonic() - started:.0f}s", flush=True)
    return result


def machine() -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    redis_version = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True
    ).stdout.split()[2].removeprefix("v=")
    postgres_version = subprocess.run(
        [str(postgres_binaries() / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.split()[2]
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("Django", "celery", "kombu", "channels", "channels-redis", "redis", "uvicorn")
    )
    return [
        f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, {versions}, Redis server {redis_version}, SQLite (WAL) on tmpfs, "
        f"PostgreSQL {postgres_version} on tmpfs over TCP loopback (fsync off, as tests/services.py starts it)",
        "load average before / after: {before} / {after}",
    ]


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first process's result with each timed figure replaced by the median over ``runs``."""
    merged = dict(runs[0])
    for key in REQUEST_METRICS:
        values = [run[key] for run in runs if run.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    merged["processes"] = len(runs)
    return merged


def keep_only(directory: Path, name: str) -> None:
    """Delete the run's databases and server directories (hundreds of MB of tmpfs), not ``name``."""
    for path in directory.iterdir():
        if path.name == name:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def create_database(port: int, name: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')


def metrics_overhead(env: Any, redis: RedisServer) -> dict[str, list[dict[str, Any]]]:
    """Metrics on against off, paired (bench_metrics.py): ``METRICS_ROUNDS`` rounds of two workers
    draining the same 6,000 changes side by side, then as many rounds of the fan-out of
    ``METRICS_CASE`` (core layer) served by two web processes at once, in each one of the two with
    metrics on; which one swaps every round. And the metrics calls alone."""
    rooms, rest = METRICS_CASE.split("x")
    subscribers, rate = rest.split("@")
    results: dict[str, list[dict[str, Any]]] = {
        "calls": [run("tests.benchmarks.bench_metrics_calls", env("turbo_async", "metrics_calls"))]
    }
    for kind, extra in (
        ("worker", {}),
        ("fanout", {"BENCH_LAYER": "core", "BENCH_ROOMS": rooms, "BENCH_SUBSCRIBERS": subscribers, "BENCH_RATE": rate}),
    ):
        for rep in range(METRICS_ROUNDS):
            redis.flushall()
            results.setdefault(kind, []).append(run(
                "tests.benchmarks.bench_metrics",
                {**env("turbo_async", f"metrics_{kind}{rep}"), "BENCH_METRICS": "1", **extra}, sys.executable,
                kind, str(rep % 2),
            ))
    return results


def metrics_rows(overhead: dict[str, list[dict[str, Any]]]) -> list[tuple[str, ...]]:
    """Metrics on against off: in each round, what "on" costs against "off" of the same round;
    the median over the rounds is held against the goal, the rounds' spread beside it."""

    def median(key: str, field: str) -> float:
        return float(statistics.median(result[field] for result in overhead[key]))

    def costlier(off: float, on: float) -> float:
        return on / off - 1

    rows = []
    # The last two are no goal's figures: they show what the unpaired rows counted besides frames.
    for name, key, field, slower, goal in (
        ("worker, changes/s (batched)", "worker", "per_s", lambda off, on: off / on - 1, True),
        ("… worker CPU ms per change", "worker", "cpu_ms", costlier, True),
        (f"fan-out {METRICS_CASE.replace('x', ' x ')}, core, p99 ms", "fanout", "p99_ms", costlier, True),
        ("… web CPU µs per frame written", "fanout", "cpu_us_per_frame", costlier, True),
        ("… web CPU s, start-up and subscribers connecting", "fanout", "start_cpu_s", costlier, False),
        ("… web CPU µs per frame, whole process", "fanout", "whole_cpu_us_per_frame", costlier, False),
    ):
        rounds = overhead[key]
        costs = [slower(r[f"off_{field}"], r[f"on_{field}"]) for r in rounds]
        cost = statistics.median(costs)
        each = ", ".join(f"{c * 100:+.1f}%" for c in costs)
        rows.append((
            f"7. metrics on vs off: {name}", f"off {_figure(median(key, f'off_{field}'))}",
            f"on {_figure(median(key, f'on_{field}'))}", "", "",
            f"on costs {cost * 100:+.1f}% (median of {len(rounds)} paired rounds: {each})",
            f"<= {METRICS_GOAL * 100:g}%" if goal else "", ("yes" if cost <= METRICS_GOAL else "NO") if goal else "",
        ))
    # The calls alone (bench_metrics_calls.py), against the CPU one frame or change costs above.
    calls = overhead["calls"][0]
    for name, key, per, field in (
        ("frame_sent, µs per frame and socket", "frame_us", "fanout", "off_cpu_us_per_frame"),
        ("task signals, µs per change (batch of 100)", "change_us", "worker", "off_cpu_ms"),
    ):
        added = calls[f"{key}_on"] - calls[f"{key}_off"]
        cpu = median(per, field) * (1000 if field.endswith("_ms") else 1)
        rows.append((
            f"7. metrics: {name}", f"off {calls[f'{key}_off']:.2f}", f"on {calls[f'{key}_on']:.2f}", "", "",
            f"+{added:.2f} µs = {added / cpu * 100:.1f}% of the {cpu:.0f} µs of CPU each costs (median off above)",
            f"<= {METRICS_GOAL * 100:g}%", "yes" if added / cpu <= METRICS_GOAL else "NO",
        ))
    return rows


def _figure(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def main() -> None:
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    # BENCH_ONLY=metrics needs no turbo-django
    only = os.environ.get("BENCH_ONLY")
    td_python = turbo_django_python() if only not in ("metrics", "floor", *SCALE_ONLY) else Path(sys.executable)
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="turbo_async_bench_", dir=shm if shm.is_dir() else None))
    redis = RedisServer(free_port(), tmp / "redis")
    postgres = PostgresServer(free_port(), tmp / "postgres")
    redis.start()
    try:
        postgres.start()
        base = dict(os.environ)
        base.update(
            DJANGO_SETTINGS_MODULE="tests.benchmarks.settings",
            BENCH_REDIS_URL=redis.url,
            BENCH_PG_PORT=str(postgres.port),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )

        def env(variant: str, db: str, database: str = "sqlite", outbox: str = "memory") -> dict[str, str]:
            """A fresh database named ``db`` (a SQLite file, or a PostgreSQL database)."""
            settings = {"BENCH_VARIANT": variant, "BENCH_DATABASE": database, "BENCH_OUTBOX": outbox}
            if database == "postgres":
                create_database(postgres.port, db)
                return {**base, **settings, "BENCH_PG_NAME": db}
            return {**base, **settings, "BENCH_DB": str(tmp / f"{db}.sqlite3")}

        def request_run(
            variant: str, db: str, *args: str, database: str = "sqlite", outbox: str = "memory",
            python: str | Path = sys.executable, **extra: str,
        ) -> dict[str, Any]:
            redis.flushall()
            return run(
                "tests.benchmarks.bench_request", {**env(variant, db, database, outbox), **extra}, python, *args
            )

        def alone(name: str, results: Any, rows: list[tuple[str, ...]]) -> None:
            """A ``BENCH_ONLY`` run's end: its raw figures kept, its table printed."""
            (tmp / "results.json").write_text(json.dumps({name: results}, indent=1))
            print()
            print(table_of(rows))
            print(f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}; "
                  f"{time.monotonic() - began:.0f}s; the raw figures: {tmp / 'results.json'}")

        if only == "metrics":
            overhead = metrics_overhead(env, redis)
            alone("metrics", overhead, [("Benchmark", "no streams", "turbo_async", "suppress()", "turbo-django",
                                         "Result", "Goal", "Met"), *metrics_rows(overhead)])
            return
        if only == "floor":
            floor = floor_runs(env, redis)
            alone("floor", floor, [FLOOR_HEADER, *floor_rows(floor)])
            return
        if only in SCALE_ONLY:
            scale = scale_runs(env, redis, only)
            alone("scale", scale, [SCALE_HEADER, *scale_rows(scale)])
            return
        print("Running the benchmarks (about 25 minutes)", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {}
        # SQLite: no streams, turbo_async with each outbox, ROUNDS processes each, alternating;
        # loading rows is measured in the first two only (the outbox does not change it).
        for rep in range(ROUNDS):
            for name, outbox, loads in (
                ("none", "memory", "41"), ("turbo_async", "memory", "41"), ("database", "database", "0"),
            ):
                variant = "none" if name == "none" else "turbo_async"
                runs.setdefault(name, []).append(
                    request_run(variant, f"{name}{rep}", outbox=outbox, BENCH_LOADS=loads)
                )
            if rep == 0:
                runs["suppress"] = [request_run("turbo_async", "suppress", "--suppress")]
                runs["turbo_django"] = [request_run("turbo_django", "turbo_django", python=td_python)]
        # PostgreSQL: the same, without loading rows; turbo-django once, for its added cost.
        for rep in range(ROUNDS):
            for name, outbox in (("pg_none", "memory"), ("pg_turbo_async", "memory"), ("pg_database", "database")):
                variant = "none" if name == "pg_none" else "turbo_async"
                runs.setdefault(name, []).append(
                    request_run(variant, f"{name}{rep}", database="postgres", outbox=outbox, BENCH_LOADS="0")
                )
            if rep == 0:
                runs["pg_turbo_django"] = [
                    request_run("turbo_django", "pg_turbo_django", database="postgres", python=td_python,
                                BENCH_LOADS="0")
                ]
        request = {name: median_of(results) for name, results in runs.items()}
        # The raw figures so far, to look at or re-tabulate (json.loads, then table(...)).
        (tmp / "results.json").write_text(json.dumps({"runs": runs}, indent=1))
        redis.flushall()
        worker = run("tests.benchmarks.bench_worker", env("turbo_async", "worker"))
        redis.flushall()
        history = run("tests.benchmarks.bench_history", env("turbo_async", "history"))
        overhead = metrics_overhead(env, redis)
        latency: dict[str, dict[str, Any]] = {}
        for case in LATENCY_CASES.split(","):
            # the hand-written floor (raw_asgi.py) reads Redis itself: no channel layer to vary
            runs_of_case = [("raw", sys.executable, "core")] + [
                (variant, python, layer)
                for layer in LAYERS
                for variant, python in (("turbo_async", sys.executable), ("turbo_django", td_python))
            ]
            for variant, python, layer in runs_of_case:
                key = f"raw {case}" if variant == "raw" else f"{variant} {layer} {case}"
                latency[key] = latency_run(env, redis, key, case, variant, layer, python)
        scale = scale_runs(env, redis)
    finally:
        postgres.stop()
        redis.stop()
        keep_only(tmp, "results.json")
    (tmp / "results.json").write_text(
        json.dumps(
            {"runs": runs, "worker": worker, "latency": latency, "history": history, "metrics": overhead,
             "scale": scale}, indent=1
        )
    )
    info = machine()
    info[-1] = info[-1].format(before=f"{load_before:.2f}", after=f"{os.getloadavg()[0]:.2f}")
    print()
    print(table(request, worker, latency, history, overhead))
    print()
    print(table_of([SCALE_HEADER, *scale_rows(scale)]))
    print()
    for line in info:
        print(line)
    print(f"make bench took {time.monotonic() - began:.0f}s; the raw figures: {tmp / 'results.json'}")


def latency_run(
    env: Any, redis: RedisServer, key: str, case: str, variant: str, layer: str, python: str | Path = sys.executable
) -> dict[str, Any]:
    """One fan-out case (``ROOMSxSUBSCRIBERS@RATE``) of ``variant`` under ``layer``, on a flushed
    Redis and a fresh database named after ``key``; a case that fails gives ``{"error": ...}``
    (turbo-django's, say: it must not lose the others)."""
    rooms, rest = case.split("x")
    subscribers, rate = rest.split("@")
    redis.flushall()
    try:
        return run(
            "tests.benchmarks.bench_latency",
            {
                **env(variant, key.replace(" ", "_").replace("@", "_")),
                "BENCH_LAYER": layer, "BENCH_ROOMS": rooms, "BENCH_SUBSCRIBERS": subscribers, "BENCH_RATE": rate,
            },
            python,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"  {key} failed: {str(exc)[-1500:]}", flush=True)
        return {"error": str(exc)[-3000:]}


FLOOR_RUNS = int(os.environ.get("BENCH_FLOOR_RUNS", "3"))
FLOOR_RATIO_GOAL = 1.25
FLOOR_PLUS_MS_GOAL = 5.0
CORE_RATIO_GOAL = 1.5
"""Issue 22, item 2: p99 <= 1.25x the floor's (1 x 200, 1 x 1,000), <= the floor's + 5 ms for
10 x 20 (one task per lone change), and the core layer within 1.5x of pub/sub."""
FLOOR_HEADER = ("Case", "Floor p99, ms", "pubsub p99, ms", "core p99, ms", "pubsub / floor", "core / floor",
                "core / pubsub", "Frames", "Goal", "Met")


def floor_runs(env: Any, redis: RedisServer) -> list[dict[str, dict[str, Any]]]:
    """``BENCH_ONLY=floor``: ``BENCH_FLOOR_RUNS`` runs of every fan-out case, each the floor and
    turbo_async under both layers back to back (the order turned each run), so that each ratio
    compares figures of the same minutes and the table shows their spread over the runs."""
    results: list[dict[str, dict[str, Any]]] = []
    variants = [("raw", "core"), ("turbo_async", "pubsub"), ("turbo_async", "core")]
    for number in range(FLOOR_RUNS):
        one: dict[str, dict[str, Any]] = {}
        for case in LATENCY_CASES.split(","):
            for variant, layer in variants if number % 2 == 0 else variants[::-1]:
                key = f"raw {case}" if variant == "raw" else f"{variant} {layer} {case}"
                one[key] = latency_run(env, redis, f"{key} {number}", case, variant, layer)
                print(f"  run {number + 1}: {key}: p99 {one[key].get('p99_ms', 'failed')}", flush=True)
        results.append(one)
    return results


def floor_rows(results: list[dict[str, dict[str, Any]]]) -> list[tuple[str, ...]]:
    """One row per fan-out case: each run's p99 of the floor and of turbo_async under each layer,
    their ratios (each run's own), and whether every run met issue 22's goal."""

    def spread(values: list[float], digits: int = 2, unit: str = "") -> str:
        if not values:
            return "failed"
        ordered = sorted(values)
        median = ordered[len(ordered) // 2]
        return f"{median:.{digits}f}{unit} ({ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f})"

    rows = []
    for case in LATENCY_CASES.split(","):
        p99: dict[str, list[float]] = {name: [] for name in ("raw", "pubsub", "core")}
        ratios: dict[str, list[float]] = {name: [] for name in ("pubsub", "core", "core/pubsub", "plus")}
        frames = []
        for one in results:
            got = {
                "raw": one.get(f"raw {case}", {}),
                "pubsub": one.get(f"turbo_async pubsub {case}", {}),
                "core": one.get(f"turbo_async core {case}", {}),
            }
            if any("p99_ms" not in result for result in got.values()):
                continue
            for name, result in got.items():
                p99[name].append(result["p99_ms"])
                frames.append((result["frames"], result["frames_expected"]))
            ratios["pubsub"].append(got["pubsub"]["p99_ms"] / got["raw"]["p99_ms"])
            ratios["core"].append(got["core"]["p99_ms"] / got["raw"]["p99_ms"])
            ratios["core/pubsub"].append(got["core"]["p99_ms"] / got["pubsub"]["p99_ms"])
            ratios["plus"].append(got["pubsub"]["p99_ms"] - got["raw"]["p99_ms"])
        lone = case.startswith("10x")
        if lone:
            goal = f"pubsub <= floor + {FLOOR_PLUS_MS_GOAL:g} ms; core <= {CORE_RATIO_GOAL:g}x pubsub; all"
            met = bool(ratios["plus"]) and max(ratios["plus"]) <= FLOOR_PLUS_MS_GOAL
        else:
            goal = f"pubsub <= {FLOOR_RATIO_GOAL:g}x floor; core <= {CORE_RATIO_GOAL:g}x pubsub; all"
            met = bool(ratios["pubsub"]) and max(ratios["pubsub"]) <= FLOOR_RATIO_GOAL
        met = met and bool(ratios["core/pubsub"]) and max(ratios["core/pubsub"]) <= CORE_RATIO_GOAL
        met = met and all(got == expected for got, expected in frames)
        delivered = sum(got for got, _ in frames)
        expected = sum(want for _, want in frames)
        rows.append((
            f"{case} ({len(ratios['pubsub'])} of {len(results)} runs)", spread(p99["raw"], 1), spread(p99["pubsub"], 1),
            spread(p99["core"], 1),
            spread(ratios["pubsub"], unit="x") + (f"; +{spread(ratios['plus'], 1, ' ms')}" if lone else ""),
            spread(ratios["core"], unit="x"), spread(ratios["core/pubsub"], unit="x"),
            f"{delivered}/{expected}", goal, "yes" if met else "NO",
        ))
    return rows


def fanout_rows(latency: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per fan-out case and channel layer: turbo_async's and turbo-django's p50 / p99,
    the frames each delivered of those expected, and the goal (on turbo_async's p99, with every
    frame delivered). The "no streams" column holds the hand-written floor of the same case
    (bench_latency.py's ``raw`` variant), and the result turbo_async's p99 against the floor's."""

    def figures(result: dict[str, Any] | None) -> tuple[str, str]:
        if result is None:
            return "", "not run"
        if "error" in result:
            return "failed", "failed"
        return (
            f"p50 {result['p50_ms']:.1f} p99 {result['p99_ms']:.1f}",
            f"{result['frames']}/{result['frames_expected']}",
        )

    rows = []
    for case in LATENCY_CASES.split(","):
        rooms, rest = case.split("x")
        subscribers, rate = rest.split("@")
        goal = LATENCY_GOALS.get(case)
        for layer in LAYERS:
            ours = latency.get(f"turbo_async {layer} {case}")
            theirs = latency.get(f"turbo_django {layer} {case}")
            mine, mine_frames = figures(ours)
            other, other_frames = figures(theirs)
            raw = latency.get(f"raw {case}")
            floor, floor_frames = figures(raw)
            versus = ""
            if raw is not None and ours is not None and "error" not in raw and "error" not in ours:
                versus = f"; p99 {ours['p99_ms'] / raw['p99_ms']:.1f}x the floor's"
            met = ""
            if goal is not None and ours is not None and "error" not in ours:
                met = "yes" if ours["p99_ms"] <= goal and ours["frames"] == ours["frames_expected"] else "NO"
            rows.append((
                f"4. {rooms} x {subscribers} subs, {rate}/s, {layer}, ms", floor, mine, "", other,
                f"frames {mine_frames} (td {other_frames}, floor {floor_frames}){versus}",
                f"p99 <= {goal:g}, all" if goal is not None else "", met,
            ))
    return rows


def table(
    request: dict[str, dict[str, Any]], worker: dict[str, Any], latency: dict[str, Any],
    history: dict[str, Any] | None = None, overhead: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    none, ta, sup, td = (request[k] for k in ("none", "turbo_async", "suppress", "turbo_django"))

    def added(key: str, row: dict[str, Any], baseline: dict[str, Any] = none) -> float:
        return float(row[key] - baseline[key])

    create_ratio = added("create_ms", ta) / added("create_ms", td)
    paced_ratio = added("paced_create_ms", ta) / added("paced_create_ms", td)
    tx_ratio = added("tx_ms", ta) / added("tx_ms", td)
    batched_ratio = worker["batched_per_s"] / worker["raw_per_s"]
    single_ratio = worker["single_per_s"] / worker["raw_per_s"]
    load_ratio = ta["load_ms"] / none["load_ms"]
    rss_growth = worker["single_rss_10k_mb"] - worker["single_rss_1k_mb"]
    ok = lambda met: "yes" if met else "NO"  # noqa: E731

    def outboxes(number: str, key: str, digits: int) -> list[tuple[str, ...]]:
        """Rows of one request figure for the database outbox (SQLite) and both outboxes on
        PostgreSQL: added cost against the same database's no-streams run, against turbo-django
        there, and the database outbox against the memory outbox."""
        rows = []
        for label, database, memory, baseline, django in (
            ("OUTBOX=database", "database", "turbo_async", "none", "turbo_django"),
            ("PostgreSQL", "pg_turbo_async", None, "pg_none", "pg_turbo_django"),
            ("PostgreSQL, OUTBOX=database", "pg_database", "pg_turbo_async", "pg_none", "pg_turbo_django"),
        ):
            row, base, other = request[database], request[baseline], request[django]
            mine, theirs = added(key, row, base), added(key, other, base)
            result = f"added {mine:.{digits}f} vs {theirs:.{digits}f} = {mine / theirs:.2f}x"
            if memory is not None:
                theirs_memory = added(key, request[memory], base)
                times = f"{mine / theirs_memory:.2f}x" if theirs_memory > 0 else "n/a"
                result += f"; {times} memory's ({mine - theirs_memory:+.{digits}f})"
            rows.append((
                f"{number}. … {label}", f"{base[key]:.{digits}f}", f"{row[key]:.{digits}f}", "",
                f"{other[key]:.{digits}f}", result, "<= 0.2x", ok(mine / theirs <= 0.2),
            ))
        return rows

    rows = [
        ("Benchmark", "no streams", "turbo_async", "suppress()", "turbo-django", "Result", "Goal", "Met"),
        (
            "1. create(), ms", f"{none['create_ms']:.3f}", f"{ta['create_ms']:.3f}",
            f"{sup['create_ms']:.3f}", f"{td['create_ms']:.3f}",
            f"added {added('create_ms', ta):.3f} vs {added('create_ms', td):.3f} = {create_ratio:.2f}x",
            "<= 0.15x", ok(create_ratio <= 0.15),
        ),
        *outboxes("1", "create_ms", 3),
        (
            "1b. create() at 100/s, ms", f"{none['paced_create_ms']:.3f}", f"{ta['paced_create_ms']:.3f}",
            f"{sup['paced_create_ms']:.3f}", f"{td['paced_create_ms']:.3f}",
            f"added {added('paced_create_ms', ta):.3f} vs {added('paced_create_ms', td):.3f} = {paced_ratio:.2f}x",
            "<= 0.2x", ok(paced_ratio <= 0.2),
        ),
        *outboxes("1b", "paced_create_ms", 3),
        (
            "2. 100 creates in 1 tx, ms", f"{none['tx_ms']:.1f}", f"{ta['tx_ms']:.1f}",
            f"{sup['tx_ms']:.1f}", f"{td['tx_ms']:.1f}",
            f"added {added('tx_ms', ta):.1f} vs {added('tx_ms', td):.1f} = {tx_ratio:.2f}x",
            "<= 0.2x", ok(tx_ratio <= 0.2),
        ),
        (
            "   of which commit, ms", f"{none['commit_ms']:.1f}", f"{ta['commit_ms']:.1f}",
            f"{sup['commit_ms']:.1f}", f"{td['commit_ms']:.1f}", "", "", "",
        ),
        (
            "   until all published, ms", f"{none['drained_ms']:.1f}", f"{ta['drained_ms']:.1f}",
            f"{sup['drained_ms']:.1f}", f"{td['drained_ms']:.1f}",
            "outbox drained (off the request path)", "", "",
        ),
        (
            "   Celery messages (td: group_sends)", str(none["tasks_per_tx"]), str(ta["tasks_per_tx"]),
            str(sup["tasks_per_tx"]), str(td["tasks_per_tx"]),
            f"+2 edits each: {ta['tasks_per_tx_with_edits']} (td {td['tasks_per_tx_with_edits']})",
            "<= 1 per object", ok(ta["tasks_per_tx"] <= 100 and ta["tasks_per_tx_with_edits"] <= 100),
        ),
        *outboxes("2", "tx_ms", 1),
        (
            f"3. worker, changes/s, batches of {worker['batch_size']}", "", f"{worker['batched_per_s']:.0f}", "", "",
            f"raw loop {worker['raw_per_s']:.0f}/s = {batched_ratio:.2f}x", ">= 1.0x", ok(batched_ratio >= 1.0),
        ),
        (
            "3. … one task per change", "", f"{worker['single_per_s']:.0f}", "", "",
            f"raw loop {worker['raw_per_s']:.0f}/s = {single_ratio:.2f}x", "(for comparison)", "",
        ),
        *fanout_rows(latency),
        (
            "5. load 10,000 rows, ms", f"{none['load_ms']:.1f}", f"{ta['load_ms']:.1f}", "",
            f"{td['load_ms']:.1f}", f"{load_ratio:.3f}x (median of 3 processes each)", "<= 1.05x",
            ok(load_ratio <= 1.05),
        ),
        (
            "6. worker RSS, MB", "", f"{worker['single_rss_1k_mb']:.1f} -> {worker['single_rss_10k_mb']:.1f}", "", "",
            f"+{rss_growth:.2f} MB after 9,000 more", "no growth", ok(rss_growth < 2),
        ),
        # Issue 12's figures: no goal, each against its baseline of the same run.
        *(
            (name, "", figure, "", "", result, "", "")
            for name, figure, result in (bench_history.rows(history) if history else [])
        ),
        *(metrics_rows(overhead) if overhead else []),
    ]
    return table_of(rows)


SCALE_HEADER = ("At scale (issue 22)", "floor", "turbo_async", "Result", "Goal", "Met")


def scale_runs(env: Any, redis: RedisServer, only: str | None = None) -> dict[str, dict[str, Any]]:
    """The rows at scale (all, or the ``BENCH_ONLY`` one): the avalanche under each layer of
    ``BENCH_LAYERS`` (bench_sockets.py), the memory of idle sockets (core layer), and the big room
    with its floor (bench_latency.py, ``BENCH_BIGROOM``). A case that fails is reported, not fatal."""
    cases: list[tuple[str, str, dict[str, str]]] = []
    if only in (None, "avalanche"):
        cases += [(f"avalanche {layer}", "tests.benchmarks.bench_sockets",
                   {"BENCH_MODE": "avalanche", "BENCH_LAYER": layer}) for layer in LAYERS]
    if only in (None, "memory"):
        cases += [(key, "tests.benchmarks.bench_sockets", {"BENCH_MODE": "memory", "BENCH_LAYER": "core",
                                                            "BENCH_VARIANT": variant})
                  for key, variant in (("memory raw", "raw"), ("memory", "turbo_async"))]
    if only in (None, "bigroom"):
        rooms, rest = BIGROOM.split("x")
        subscribers, rate = rest.split("@")
        shape = {
            "BENCH_LAYER": BIGROOM_LAYER, "BENCH_ROOMS": rooms, "BENCH_SUBSCRIBERS": subscribers,
            "BENCH_RATE": rate, "BENCH_SECONDS": BIGROOM_SECONDS, "BENCH_WEBS": BIGROOM_WEBS,
            "BENCH_SUBSCRIBER_PROCESSES": "4",
        }
        cases += [(f"bigroom {variant}", "tests.benchmarks.bench_latency", {**shape, "BENCH_VARIANT": variant})
                  for variant in ("raw", "turbo_async")]
    results: dict[str, dict[str, Any]] = {}
    for key, module, extra in cases:
        redis.flushall()
        variant = extra.pop("BENCH_VARIANT", "turbo_async")
        try:
            results[key] = run(module, {**env(variant, key.replace(" ", "_")), **extra})
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  {key} failed: {str(exc)[-1500:]}", flush=True)
            results[key] = {"error": str(exc)[-3000:]}
    return results


def scale_rows(scale: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """The rows at scale, each beside its goal (and the floor, for the big room)."""
    ok = lambda met: "yes" if met else "NO"  # noqa: E731
    rows: list[tuple[str, ...]] = []
    for layer in LAYERS:
        result = scale.get(f"avalanche {layer}")
        if result is None:
            continue
        name = f"8. avalanche, {result.get('sockets', 2000):,} sockets x {result.get('subscriptions', 100)} subs, {layer}"
        if "error" in result:
            rows.append((name, "", "failed", result["error"][-200:].replace("\n", " "), "", "NO"))
            continue
        last = result["all_answered_s"]
        problems = result["closed"] + result["internal"] + result["tracebacks"]
        rows.append((
            name, "", f"{last:.1f} s" if last is not None else f"{result['sockets_done']} sockets done",
            f"answered {result['answered']}/{result['expected']}, refused {result['refused']}; socket p50 "
            f"{result['socket_p50_s']:.1f} s; closed {result['closed']} {result['closed_codes'] or ''}; "
            f"internal errors {result['internal']}; tracebacks {result['tracebacks']}",
            f"all <= {AVALANCHE_GOAL_S:g} s, none closed, no error",
            ok(last is not None and last <= AVALANCHE_GOAL_S and problems == 0),
        ))
        rows.append((
            f"8. … subscriptions/s per web process, {layer}", "", f"{result['per_s']:.0f}",
            f"{result['per_cpu_s']:.0f} per CPU-second of the web process ({result['web_cpu_s']:.1f} s CPU)",
            "", "",
        ))
    memory, memory_floor = scale.get("memory"), scale.get("memory raw")
    if memory is not None:
        name = f"9. RSS per idle socket, 5 subs, {memory.get('sockets', 10000):,} sockets, KB"
        floor_kb = (f"{memory_floor['kb_per_socket']:.1f}"
                    if memory_floor is not None and "kb_per_socket" in memory_floor else "")
        if "error" in memory:
            rows.append((name, floor_kb, "failed", memory["error"][-200:].replace("\n", " "), "", "NO"))
        else:
            rows.append((
                name, floor_kb, f"{memory['kb_per_socket']:.1f}",
                f"RSS {memory['rss_before_kb'] / 1024:.0f} MB after a warm-up, {memory['rss_after_kb'] / 1024:.0f} "
                f"MB with the sockets; closed {memory['closed']}",
                f"<= {MEMORY_GOAL_KB:g}", ok(memory["kb_per_socket"] <= MEMORY_GOAL_KB and memory["closed"] == 0),
            ))
    ours, floor = scale.get("bigroom turbo_async"), scale.get("bigroom raw")
    if ours is not None or floor is not None:
        rooms, rest = BIGROOM.split("x")
        subscribers, rate = rest.split("@")

        def figures(result: dict[str, Any] | None) -> str:
            if result is None:
                return "not run"
            if "error" in result:
                return "failed"
            return f"p50 {result['p50_ms']:.0f} p99 {result['p99_ms']:.0f}"

        result = ""
        met = "NO"
        if ours is not None and "error" not in ours:
            in_order = ours["out_of_order"] == 0 and ours["frames"] == ours["frames_expected"]
            result = (f"frames {ours['frames']}/{ours['frames_expected']}, out of order {ours['out_of_order']}, "
                      f"sockets complete {ours['sockets_complete']}/{ours['sockets']}")
            if floor is not None and "error" not in floor:
                result += (f"; p99 {ours['p99_ms'] / floor['p99_ms']:.2f}x the floor's (floor frames "
                           f"{floor['frames']}/{floor['frames_expected']}, out of order {floor['out_of_order']})")
            met = ok(in_order and ours["p99_ms"] <= BIGROOM_GOAL_MS)
        rows.append((
            f"10. {rooms} x {int(subscribers):,} subs, {rate}/s, {BIGROOM_SECONDS} s, {BIGROOM_WEBS} webs, "
            f"{BIGROOM_LAYER}, ms",
            figures(floor), figures(ours), result, f"p99 <= {BIGROOM_GOAL_MS:g}, all, in order", met,
        ))
    return rows


def table_of(rows: list[tuple[str, ...]]) -> str:
    """``rows`` (the first is the header) as a reST simple table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows[1:]]
    lines.append(rule)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
