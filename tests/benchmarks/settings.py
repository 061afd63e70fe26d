"""Settings of the benchmark processes that tests/benchmarks/run.py starts (``make bench``).

One variant per process, chosen by ``BENCH_VARIANT``:

- ``none``: the chat app without any streams app (the cost of a plain ``save()``);
- ``turbo_async``: the chat app with turbo_async installed (publishes to the Redis broker);
- ``turbo_django``: turbo-django 0.4.4 with the same models, templates and stream code
  (tests/benchmarks/turbochat), run by the interpreter of the benchmark's own venv;
- ``raw``: the chat app without any streams app, and a hand-written fan-out (the latency
  benchmark's baseline: bench_latency.py, raw_asgi.py).

Every process of one run shares the SQLite file ``BENCH_DB`` (WAL, so the worker reads while the
web process writes) and the Redis server at ``BENCH_REDIS_URL``.

``BENCH_DATABASE=postgres`` puts the process on the PostgreSQL server that run.py started on
``BENCH_PG_PORT`` instead, in the database ``BENCH_PG_NAME``. ``BENCH_OUTBOX`` is turbo_async's
``OUTBOX`` setting (``memory``, the default, or ``database``). ``BENCH_LAYER`` chooses the channel
layer: ``core`` (``channels_redis.core.RedisChannelLayer``, the default: one Redis list per
subscribed channel, so a group message is written once per subscriber) or ``pubsub``
(``channels_redis.pubsub.RedisPubSubChannelLayer``: one Redis PUBLISH per group, received once
per web process).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
VARIANT = os.environ.get("BENCH_VARIANT", "turbo_async")
VARIANTS = ("none", "turbo_async", "turbo_django", "raw")
if VARIANT not in VARIANTS:
    raise RuntimeError(f"BENCH_VARIANT must be one of {VARIANTS}, not {VARIANT!r}.")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
if DATABASE not in ("sqlite", "postgres"):
    raise RuntimeError(f"BENCH_DATABASE must be 'sqlite' or 'postgres', not {DATABASE!r}.")
OUTBOX = os.environ.get("BENCH_OUTBOX", "memory")
LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
LAYER = os.environ.get("BENCH_LAYER", "core")
if LAYER not in LAYERS:
    raise RuntimeError(f"BENCH_LAYER must be one of {tuple(LAYERS)}, not {LAYER!r}.")

SECRET_KEY = "turbo-async-benchmarks"
DEBUG = False  # so that Django's cached template loader is on, as in production
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
]
if VARIANT == "turbo_async":
    INSTALLED_APPS += ["turbo_async", "demo.chat"]
elif VARIANT == "turbo_django":
    INSTALLED_APPS += ["turbo", "tests.benchmarks.turbochat"]
else:
    INSTALLED_APPS += ["demo.chat"]

ROOT_URLCONF = "tests.benchmarks.urls"
STATIC_URL = "/static/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The seed's chat templates, frozen here so that every variant renders the same markup
        # whatever the demo's templates become (they come before demo.chat's own).
        "DIRS": [ROOT / "tests" / "benchmarks" / "templates"],
        "APP_DIRS": True,
    }
]

# Persistent connections, as a worker should run: Celery's Django fixup closes the
# connection after every task unless CONN_MAX_AGE keeps it (a new one per broadcast).
if DATABASE == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("BENCH_PG_NAME", "bench"),
            "USER": "postgres",
            "HOST": "127.0.0.1",  # TCP on loopback, as an application server next to its database
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "CONN_MAX_AGE": 600,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB", "/tmp/turbo_async_bench.sqlite3"),
            "CONN_MAX_AGE": 600,
            "OPTIONS": {
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": LAYERS[LAYER],
        # socket_timeout None: redis-py's default (5 s) drops idle readers (channels_redis #422).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}

# BENCH_METRICS=1: Prometheus metrics on (run.py's overhead rows measure them on against off).
TURBO_ASYNC = {"OUTBOX": OUTBOX, "METRICS": os.environ.get("BENCH_METRICS", "0") == "1"}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_DB_REUSE_MAX = 1000

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"turbo_async": {"handlers": ["console"], "level": "WARNING"}},
}
