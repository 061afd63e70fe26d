from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    Broker,
    CeleryWorker,
    PostgresServer,
    RabbitMQServer,
    RedisServer,
    Uvicorn,
    free_port,
    use_broker,
)

LOG_DIR = Path(os.environ["TURBO_TEST_TMP"]) / "logs"


# -- channel layers ---------------------------------------------------------------------------

LAYERS = ("pubsub", "core")
"""The channels_redis layers the worker and web processes can run (tests/settings.py)."""


def current_layer() -> str:
    """The layer of this run (``TURBO_TEST_LAYER``, pubsub by default; make test runs both)."""
    from django.conf import settings

    return str(settings.LAYER)


def layer_backend(layer: str) -> str:
    """The ``BACKEND`` dotted path of ``layer``."""
    from django.conf import settings

    return str(settings.LAYERS[layer])


def layer_env(layer: str) -> dict[str, str]:
    """Environment of a worker or web process that must run ``layer`` whatever this run's is:
    for tests about one layer's behaviour (core's capacity and group expiry)."""
    return {"TURBO_TEST_LAYER": layer}


@pytest.fixture(autouse=True, scope="session")
def celery_settings_a_test_can_override() -> None:
    """Tests turn Celery settings off and on (``app.conf.task_always_eager = False``). Before
    Celery 5.7, a setting read with the ``CELERY`` namespace (``CELERY_TASK_ALWAYS_EAGER`` in
    tests/settings.py) is looked up before the plain name in every source, so such an assignment
    does not win and the test runs eager. On those versions (make test-lowest) this reloads the
    test process's app from the same values under their plain names; Celery 5.7 and later are
    left as they are."""
    import celery
    from django.conf import settings
    from packaging.version import Version

    from turbo_async import conf

    if Version(celery.__version__) >= Version("5.7"):
        return
    plain = {name.removeprefix("CELERY_").lower(): getattr(settings, name)
             for name in dir(settings) if name.startswith("CELERY_")}
    conf.celery_app().config_from_object(plain, force=True)


@pytest.fixture(autouse=True)
def fresh_abuse_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with the process's whole budget of abuse lines (LOGGED_REFUSALS_PER_MINUTE):
    refusals logged by earlier tests in the same minute must not silence this one's."""
    from turbo_async import security

    fresh = security.LogBudget(security.abuse_log.what, security.abuse_log.per_minute)
    monkeypatch.setattr(security, "abuse_log", fresh)
    yield
    if fresh.timer is not None:  # its event loop may be gone with the test
        fresh.timer.cancel()


@pytest.fixture(params=LAYERS)
def each_layer(request: pytest.FixtureRequest) -> str:
    """A test that starts its own processes once per layer, in every run."""
    return str(request.param)


class Published(list[dict[str, Any]]):
    """The broadcast tasks queued so far: ``{"args", "kwargs", "options"}`` as a broker carries them
    (each task's one argument is its list of items, turbo_async.changes' wire format)."""

    def items(self) -> list[dict[str, Any]]:
        """Every item of every task, in publish order."""
        return [item for call in self for item in call["args"][0]]

    def events(self) -> list[tuple[str, Any, str, bool]]:
        """Each change published, as ``(label, pk, event, created)``."""
        return [
            (item["label"], item["pk"], item["event"], item["created"]) for item in self.items() if "label" in item
        ]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Record what would be sent to the broker: the broadcast task's ``apply_async`` is the seam
    between the request path and Celery; the database commits for real."""
    from turbo_async import tasks

    calls = Published()

    def apply_async(args: Any, kwargs: Any = None, **options: Any) -> None:
        # The payload must survive JSON: that is all a broker carries.
        calls.append(json.loads(json.dumps({"args": args, "kwargs": kwargs or {}, "options": options})))

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    return calls


@pytest.fixture(scope="session")
def database_server() -> Iterator[PostgresServer | None]:
    """With TURBO_TEST_DATABASE=postgres, a real PostgreSQL server on the port tests/settings.py
    chose; nothing on SQLite."""
    if os.environ.get("TURBO_TEST_DATABASE", "sqlite") != "postgres":
        yield None
        return
    server = PostgresServer(int(os.environ["TURBO_TEST_PG_PORT"]), Path(os.environ["TURBO_TEST_TMP"]) / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, database_server: PostgresServer | None
) -> None:
    """pytest-django's hook before it creates the test databases: the server must be up by then."""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis server on the port that tests/settings.py chose for this run."""
    server = RedisServer(int(os.environ["TURBO_TEST_REDIS_PORT"]), Path(os.environ["TURBO_TEST_TMP"]) / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, django_db_setup: None, django_db_blocker: object) -> Iterator[CeleryWorker]:
    """A real Celery worker process (``celery -A workers worker``) on the test database file."""
    process = CeleryWorker(LOG_DIR)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def web(redis_server: RedisServer, django_db_setup: None) -> Iterator[Uvicorn]:
    """A real uvicorn process serving tests.asgi with the Redis channel layer."""
    server = Uvicorn(LOG_DIR)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_broker(redis_server: RedisServer) -> Iterator[RedisServer]:
    """Publish tasks to the real Redis broker instead of running them eagerly."""
    from workers import app

    app.conf.task_always_eager = False
    try:
        yield redis_server
    finally:
        app.conf.task_always_eager = True


@pytest.fixture
def live(live_broker: RedisServer, worker: CeleryWorker, web: Uvicorn, transactional_db: None) -> Uvicorn:
    """The whole pipeline for real: committed rows, Redis broker, worker process, uvicorn."""
    return web


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A real RabbitMQ node (Debian's rabbitmq-server) on free loopback ports, with its own epmd.
    Without rabbitmq-server installed this fails, naming the package: it never skips."""
    server = RabbitMQServer(Path(os.environ["TURBO_TEST_TMP"]) / "rabbitmq", LOG_DIR)
    server.start()
    yield server
    server.stop()


BROKERS = ("redis", "rabbitmq")


@pytest.fixture(scope="module", params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Each broker-path test module once per broker: a Redis broker of the module's own (the
    session worker consumes from the session's Redis and must not take these tasks), or the
    session's RabbitMQ node. The channel layer stays on the session's Redis."""
    if request.param == "redis":
        server = RedisServer(free_port(), tmp_path_factory.mktemp("broker"))
        server.start()
        try:
            yield Broker("redis", server.url, server)
        finally:
            server.stop()
    else:
        rabbitmq: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        yield Broker("rabbitmq", rabbitmq.url, rabbitmq)


@pytest.fixture
def publish_to(broker: Broker, transactional_db: None) -> Iterator[Broker]:
    """Committed rows, published by this process to ``broker`` (Celery eager mode off)."""
    from workers import app

    previous = app.conf.broker_url
    use_broker(broker.url)
    app.conf.task_always_eager = False
    try:
        yield broker
    finally:
        app.conf.task_always_eager = True
        use_broker(previous)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this run's temporary directory (databases, logs, Redis dirs)."""
    if os.environ.get("TURBO_TEST_TMP_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["TURBO_TEST_TMP"], ignore_errors=True)
