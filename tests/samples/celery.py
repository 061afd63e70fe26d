"""The project's Celery app, as the README's step 1 writes it: ``celery -A tests.samples worker``."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.samples.settings")
app = Celery("samples")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # finds turbo_async's broadcast tasks
