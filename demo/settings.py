"""Settings of the demo chat project. Everything that differs per deployment comes from the
environment: REDIS_URL, DJANGO_DB_PATH, DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS,
DJANGO_CSRF_TRUSTED_ORIGINS.

Safe by default, as Django's deployment checklist asks: no built-in secret key (anyone who knows
the key can forge signed subscriptions and sessions) and DEBUG off unless ``DJANGO_DEBUG=1``.
``make demo`` (demo/run.py) sets both for the processes it starts, so it needs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY.strip():
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set. The demo has no built-in key: set DJANGO_SECRET_KEY to a "
        "long random string, e.g. export DJANGO_SECRET_KEY=\"$(python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(50))')\". make demo sets one for you; to run manage.py "
        "next to it, use the same: export DJANGO_SECRET_KEY=\"$(cat .demo/secret_key)\"."
    )
# Off unless asked for: DEBUG shows settings and tracebacks to anyone who gets an error page.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
# Behind a TLS proxy, e.g. "https://chat.example.com": the origins forms may be posted from.
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "turbo_async",
    "demo.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Turbo's X-Turbo-Request-Id: the page whose request caused a refresh ignores it.
    "turbo_async.middleware.TurboRequestIdMiddleware",
]

ROOT_URLCONF = "demo.urls"
ASGI_APPLICATION = "demo.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        # Pub/sub: the layer that did better under every fault and in fan-out (docs/guarantees.rst).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # socket_timeout None: the core layer needs it with redis-py 8 (idle WebSockets dropped
        # after ~5 s otherwise); harmless with pub/sub.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}

# Prometheus metrics (docs/monitoring.rst): a web process serves them on /metrics, a worker on
# WORKER_METRICS_PORT when set (make demo and compose set it). METRICS=0 turns them off.
TURBO_ASYNC = {
    "METRICS": os.environ.get("METRICS", "1") == "1",
    "METRICS_PORT": int(os.environ["WORKER_METRICS_PORT"]) if os.environ.get("WORKER_METRICS_PORT") else None,
    "METRICS_ADDRESS": os.environ.get("WORKER_METRICS_ADDRESS", "127.0.0.1"),
}

CELERY_BROKER_URL = REDIS_URL
# Redis as broker: a task whose worker was killed mid-hook is handed out again once
# visibility_timeout has passed, at kombu's next restore sweep (every 10 s x throttle 1 here; its
# default throttle of 10 would add up to 100 s): within 310 s (docs/guarantees.rst). Keep the
# timeout above the slowest hook plus DELIVERY_RETRY_BACKOFF_MAX. socket_timeout bounds a publish
# to a broker that hangs.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "300")),
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}
CELERY_TASK_IGNORE_RESULT = True

USE_TZ = True
TIME_ZONE = "UTC"
