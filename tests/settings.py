"""Settings of the test suite.

The test process runs Celery eagerly and uses Channels' in-memory layer (unit tests); the
processes that integration fixtures start (worker, uvicorn) get ``TURBO_TEST_SUBPROCESS=1`` and
use the real Redis server and the same SQLite file as the test database.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Chosen once per test run and inherited by every process the fixtures start.
REDIS_PORT = int(os.environ.setdefault("TURBO_TEST_REDIS_PORT", str(_free_port())))
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
# Failure tests run the channel layer on a Redis of its own, so they can stop it alone.
LAYER_REDIS_URL = f"redis://127.0.0.1:{os.environ.get('TURBO_TEST_LAYER_REDIS_PORT', REDIS_PORT)}/0"
if "TURBO_TEST_TMP" not in os.environ:  # the test process makes it; its children inherit it
    os.environ["TURBO_TEST_TMP"] = tempfile.mkdtemp(prefix="turbo_async_tests_")
    os.environ["TURBO_TEST_TMP_OWNER"] = str(os.getpid())  # tests/conftest.py removes it at exit
_tmp = os.environ["TURBO_TEST_TMP"]
SUBPROCESS = os.environ.get("TURBO_TEST_SUBPROCESS") == "1"

SECRET_KEY = "turbo-async-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "turbo_async",
    # The demo's own tests (tests/test_demo_*.py, e2e, Flower) and the docs' examples use it; the
    # library's tests use tests.testapp.
    "demo.chat",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Turbo's X-Turbo-Request-Id: the page whose request caused a refresh ignores it.
    "turbo_async.middleware.TurboRequestIdMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
STATIC_URL = "/static/"


def _sqlite(name: str) -> dict[str, object]:
    path = os.path.join(_tmp, f"{name}.sqlite3")
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {"timeout": 20},
        "TEST": {"NAME": path},
    }


def _postgres(name: str) -> dict[str, object]:
    # The server is started by tests/conftest.py (database_server) before the test databases are
    # made; worker and web processes inherit the port and use the same (test) databases.
    database = f"turbo_async_{name}"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ["TURBO_TEST_PG_PORT"],
        "TEST": {"NAME": database},
    }


# TURBO_TEST_DATABASE=postgres runs everything against a real PostgreSQL server (make test does).
DATABASE = os.environ.get("TURBO_TEST_DATABASE", "sqlite")
if DATABASE == "postgres":
    os.environ.setdefault("TURBO_TEST_PG_PORT", str(_free_port()))
    DATABASES = {"default": _postgres("default"), "other": _postgres("other")}
elif DATABASE == "sqlite":
    DATABASES = {"default": _sqlite("default"), "other": _sqlite("other")}
else:
    raise ValueError(f"TURBO_TEST_DATABASE must be 'sqlite' or 'postgres', not {DATABASE!r}.")
DATABASE_ROUTERS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# TURBO_TEST_LAYER picks the channels_redis layer of the processes the fixtures start: "pubsub"
# (RedisPubSubChannelLayer, the default the docs recommend) or "core" (RedisChannelLayer).
# scripts/run_tests.py runs its SQLite phase on one and its PostgreSQL phase on the other, so
# every fault test runs under both; tests that need one layer force it in their processes' env.
LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
LAYER = os.environ.get("TURBO_TEST_LAYER", "pubsub")
if LAYER not in LAYERS:
    raise ValueError(f"TURBO_TEST_LAYER must be one of {sorted(LAYERS)}, not {LAYER!r}.")

if SUBPROCESS:
    # As the docs recommend; turbo_async itself retries the first command on a pooled
    # connection that a Redis restart broke (tests/integration/test_failures.py).
    _layer_config: dict[str, object] = {"hosts": [{"address": LAYER_REDIS_URL, "socket_timeout": None}]}
    if "TURBO_TEST_LAYER_HOSTS" in os.environ:
        # Several shards, or Sentinel host dicts (tests/e2e/test_topologies.py): a JSON list of
        # channels_redis hosts; Sentinel's [host, port] pairs become the tuples redis-py expects.
        _hosts = json.loads(os.environ["TURBO_TEST_LAYER_HOSTS"])
        for _host in _hosts:
            if isinstance(_host, dict) and "sentinels" in _host:
                _host["sentinels"] = [tuple(pair) for pair in _host["sentinels"]]
        _layer_config["hosts"] = _hosts
    if LAYER == "core" and "TURBO_TEST_GROUP_EXPIRY" in os.environ:
        # A short expiry shows a killed web process's members going (tests/integration/test_failures.py).
        _layer_config["group_expiry"] = int(os.environ["TURBO_TEST_GROUP_EXPIRY"])
    CHANNEL_LAYERS = {"default": {"BACKEND": LAYERS[LAYER], "CONFIG": _layer_config}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = not SUBPROCESS  # integration fixtures turn it off in the test process
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# socket_timeout bounds a publish to a broker that hangs (docs/guarantees.rst); failure tests
# start a worker with a short visibility_timeout to see a killed worker's task redelivered.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "visibility_timeout": int(os.environ.get("TURBO_TEST_VISIBILITY_TIMEOUT", "30")),
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}
if "TURBO_TEST_VISIBILITY_TIMEOUT" in os.environ:
    # The restore sweep's interval and throttle: 1 and 1 unless TURBO_TEST_UNACKED_RESTORE_INTERVAL /
    # _THROTTLE say otherwise ("kombu" leaves kombu's default, 10), for the redelivery table of
    # docs/guarantees.rst (tests/integration/test_redelivery.py computes its bound from them).
    for option in ("unacked_restore_interval", "unacked_restore_throttle"):
        value = os.environ.get(f"TURBO_TEST_{option.upper()}", "1")
        if value != "kombu":
            CELERY_BROKER_TRANSPORT_OPTIONS[option] = int(value)
# A Sentinel broker (CELERY_BROKER_URL "sentinel://...;sentinel://..." in the environment) names its
# master (tests/integration/test_sentinel.py).
if "TURBO_TEST_SENTINEL_MASTER" in os.environ:
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = os.environ["TURBO_TEST_SENTINEL_MASTER"]
# RabbitMQ quorum queues with topic exchanges, so that countdowns use native delayed delivery, as
# docs/deployment.rst recommends (tests/integration/test_quorum_queues.py). The queue has a name of
# its own: the session's RabbitMQ node may hold test_brokers.py's classic "celery" queue, and a
# queue's type cannot change.
QUORUM_QUEUES = {
    "task_default_queue": "turbo-quorum",
    "task_default_queue_type": "quorum",
    "task_create_missing_queue_type": "quorum",
    "task_default_exchange_type": "topic",
    "task_create_missing_queue_exchange_type": "topic",
}
if os.environ.get("TURBO_TEST_QUORUM_QUEUES") == "1":
    CELERY_TASK_DEFAULT_QUEUE = QUORUM_QUEUES["task_default_queue"]
    CELERY_TASK_DEFAULT_QUEUE_TYPE = QUORUM_QUEUES["task_default_queue_type"]
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = QUORUM_QUEUES["task_create_missing_queue_type"]
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = QUORUM_QUEUES["task_default_exchange_type"]
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = QUORUM_QUEUES["task_create_missing_queue_exchange_type"]

# Failure tests give their worker shorter retry settings: a JSON dict of TURBO_ASYNC keys.
TURBO_ASYNC = json.loads(os.environ.get("TURBO_TEST_TURBO_ASYNC", "{}"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"turbo_async": {"handlers": ["console"], "level": "DEBUG" if SUBPROCESS else "INFO"}},
}
