"""``make bench``: every benchmark in one run, on this machine, printed as one table.

Starts a Redis server, creates the turbo-django 0.4.4 venv (tests/benchmarks/.env) if needed,
then runs each variant in its own process (see bench_*.py) and prints medians and ratios as a
reST table (docs/benchmarks.rst shows one).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.benchmarks.common import read_result  # noqa: E402
from tests.services import RedisServer, free_port, redis_server_binary  # noqa: E402

TURBO_DJANGO_ENV = ROOT / "tests" / "benchmarks" / ".env"


def turbo_django_python() -> Path:
    """The interpreter of a venv with turbo-django 0.4.4 and the same Django/Channels/Redis
    versions as the project's venv, created on first use."""
    pins = [
        "turbo-django==0.4.4",
        *(
            f"{name}=={importlib.metadata.version(name)}"
            for name in ("Django", "channels", "channels-redis", "redis")
        ),
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
    print(f"  {module} {env['BENCH_VARIANT']} {' '.join(args)}: {time.monotonic() - started:.0f}s", flush=True)
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
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("Django", "celery", "kombu", "channels", "channels-redis", "redis", "uvicorn")
    )
    return [
        f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, {versions}, Redis server {redis_version}, SQLite (WAL) on tmpfs",
        "load average before / after: {before} / {after}",
    ]


def main() -> None:
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    td_python = turbo_django_python()
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="turbo_async_bench_", dir=shm if shm.is_dir() else None))
    redis = RedisServer(free_port(), tmp / "redis")
    redis.start()
    try:
        base = dict(os.environ)
        base.update(
            DJANGO_SETTINGS_MODULE="tests.benchmarks.settings",
            BENCH_REDIS_URL=redis.url,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )

        def env(variant: str, db: str) -> dict[str, str]:
            return {**base, "BENCH_VARIANT": variant, "BENCH_DB": str(tmp / f"{db}.sqlite3")}

        print("Running the benchmarks (about 3 minutes)", flush=True)
        request = {}
        for name, variant, python, args in (
            ("none", "none", sys.executable, ()),
            ("turbo_async", "turbo_async", sys.executable, ()),
            ("suppress", "turbo_async", sys.executable, ("--suppress",)),
            ("turbo_django", "turbo_django", td_python, ()),
        ):
            redis.flushall()
            request[name] = run("tests.benchmarks.bench_request", env(variant, name), python, *args)
        # Loading rows differs by a few percent between processes whatever is installed: take
        # the median over three processes of each, alternating.
        for name in ("none", "turbo_async"):
            request[name]["load_runs"] = [request[name]["load_ms"]]
        for rep in range(2):
            for name in ("none", "turbo_async"):
                redis.flushall()
                again = run(
                    "tests.benchmarks.bench_request",
                    {**env(name, f"{name}-load{rep}"), "BENCH_CREATES": "100"},
                )
                request[name]["load_runs"].append(again["load_ms"])
        for name in ("none", "turbo_async"):
            request[name]["load_ms"] = statistics.median(request[name]["load_runs"])
        redis.flushall()
        worker = run("tests.benchmarks.bench_worker", env("turbo_async", "worker"))
        redis.flushall()
        latency = run("tests.benchmarks.bench_latency", env("turbo_async", "latency"))
    finally:
        redis.stop()
    info = machine()
    info[-1] = info[-1].format(before=f"{load_before:.2f}", after=f"{os.getloadavg()[0]:.2f}")
    print()
    print(table(request, worker, latency))
    print()
    for line in info:
        print(line)
    print(f"make bench took {time.monotonic() - began:.0f}s")


def table(request: dict[str, dict[str, Any]], worker: dict[str, Any], latency: dict[str, Any]) -> str:
    none, ta, sup, td = (request[k] for k in ("none", "turbo_async", "suppress", "turbo_django"))

    def added(key: str, row: dict[str, Any]) -> float:
        return float(row[key] - none[key])

    create_ratio = added("create_ms", ta) / added("create_ms", td)
    paced_ratio = added("paced_create_ms", ta) / added("paced_create_ms", td)
    tx_ratio = added("tx_ms", ta) / added("tx_ms", td)
    worker_ratio = worker["worker_per_s"] / worker["raw_per_s"]
    load_ratio = ta["load_ms"] / none["load_ms"]
    rss_growth = worker["rss_10k_mb"] - worker["rss_1k_mb"]
    ok = lambda met: "yes" if met else "NO"  # noqa: E731
    rows = [
        ("Benchmark", "no streams", "turbo_async", "suppress()", "turbo-django", "Result", "Goal", "Met"),
        (
            "1. create(), ms", f"{none['create_ms']:.3f}", f"{ta['create_ms']:.3f}",
            f"{sup['create_ms']:.3f}", f"{td['create_ms']:.3f}",
            f"added {added('create_ms', ta):.3f} vs {added('create_ms', td):.3f} = {create_ratio:.2f}x",
            "<= 0.2x", ok(create_ratio <= 0.2),
        ),
        (
            "1b. create() at 100/s, ms", f"{none['paced_create_ms']:.3f}", f"{ta['paced_create_ms']:.3f}",
            f"{sup['paced_create_ms']:.3f}", f"{td['paced_create_ms']:.3f}",
            f"added {added('paced_create_ms', ta):.3f} vs {added('paced_create_ms', td):.3f} = {paced_ratio:.2f}x",
            "<= 0.2x", ok(paced_ratio <= 0.2),
        ),
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
            "   tasks (td: group_sends)", str(none["tasks_per_tx"]), str(ta["tasks_per_tx"]),
            str(sup["tasks_per_tx"]), str(td["tasks_per_tx"]),
            f"+2 edits each: {ta['tasks_per_tx_with_edits']} (td {td['tasks_per_tx_with_edits']})",
            "<= 1 per object", ok(ta["tasks_per_tx"] <= 100 and ta["tasks_per_tx_with_edits"] <= 100),
        ),
        (
            "3. worker, broadcasts/s", "", f"{worker['worker_per_s']:.0f}", "", "",
            f"raw loop {worker['raw_per_s']:.0f}/s = {worker_ratio:.2f}x", ">= 0.5x",
            ok(worker_ratio >= 0.5),
        ),
        (
            "4. commit to frame, ms", "", f"p50 {latency['p50_ms']:.1f}", f"p95 {latency['p95_ms']:.1f}",
            f"p99 {latency['p99_ms']:.1f}",
            f"{latency['frames']}/{latency['frames_expected']} frames, {latency['rooms']} rooms",
            "p50 <= 10, p99 <= 50", ok(latency["p50_ms"] <= 10 and latency["p99_ms"] <= 50),
        ),
        (
            "5. load 10,000 rows, ms", f"{none['load_ms']:.1f}", f"{ta['load_ms']:.1f}", "",
            f"{td['load_ms']:.1f}", f"{load_ratio:.3f}x (median of 3 processes each)", "<= 1.05x",
            ok(load_ratio <= 1.05),
        ),
        (
            "6. worker RSS, MB", "", f"{worker['rss_1k_mb']:.1f} -> {worker['rss_10k_mb']:.1f}", "", "",
            f"+{rss_growth:.2f} MB after 9,000 more", "no growth", ok(rss_growth < 2),
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows[1:]]
    lines.append(rule)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
