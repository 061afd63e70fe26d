"""The Celery app of the worker service (what ``make demo`` and compose.yaml run).

Configured from Django settings with the ``CELERY_`` prefix, task events on so that Flower sees
every broadcast. Projects with their own Celery app do not need this module: their
``app.autodiscover_tasks()`` finds ``turbo_async.tasks``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

app = Celery("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_send_task_events = True
# No task-sent events: each would be a second broker round trip on the request path (a third of
# a publish, see docs/benchmarks.rst); Flower shows each broadcast from the worker's events.
app.conf.task_send_sent_event = False
app.autodiscover_tasks()
