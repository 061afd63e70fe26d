"""Settings of the sample project: turbo-django's samples' ``settings.py`` with ``"turbo"`` renamed
``"turbo_async"`` in INSTALLED_APPS, plus the README's step 1 (a Redis channel layer and broker).

The test passes the database file and the Redis URL in the environment; the three sample
directories go on ``sys.path``, as each sample's ``manage.py`` directory was, so that the apps keep
their names (``chat``, ``reminders``, ``app``) and a shell imports ``from app.streams import ...``.
Inside an app, the samples' ``from chat.models import Room`` is written ``from .models import Room``:
the same module, and tests/test_packaging.py takes a top-level ``chat`` for a missing distribution.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
for sample in ("chat", "reminders", "components_demo"):
    if str(BASE_DIR / sample) not in sys.path:
        sys.path.insert(0, str(BASE_DIR / sample))

SECRET_KEY = "turbo-async-samples"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "turbo_async",
    "channels",
    "chat",
    "reminders",
    "app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tests.samples.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The samples' base.html, once for the three apps (each sample had its own copy).
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "tests.samples.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TURBO_SAMPLES_DATABASE", str(Path(tempfile.gettempdir()) / "turbo_samples.sqlite3")),
        "OPTIONS": {"timeout": 20},  # web, worker and shell processes share the file
    }
}

USE_TZ = True
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The README's step 1.
REDIS_URL = os.environ.get("TURBO_SAMPLES_REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}
CELERY_BROKER_URL = REDIS_URL
