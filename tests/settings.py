"""Settings of the test suite.

The test process runs Celery eagerly and uses Channels' in-memory layer (unit tests); the
processes that integration fixtures start (worker, uvicorn) get ``TURBO_TEST_SUBPROCESS=1`` and
use the real Redis server and the same SQLite file as the test database.
"""

from __future__ import annotations

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
_tmp = os.environ.setdefault("TURBO_TEST_TMP", tempfile.mkdtemp(prefix="turbo_async_tests_"))
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
    "demo.chat",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
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


DATABASES = {"default": _sqlite("default"), "other": _sqlite("other")}
DATABASE_ROUTERS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if SUBPROCESS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = not SUBPROCESS  # integration fixtures turn it off in the test process
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 30}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"turbo_async": {"handlers": ["console"], "level": "DEBUG" if SUBPROCESS else "INFO"}},
}
