"""Layer 10: the Django app. ``ready()`` wires everything once the models are loaded."""

from __future__ import annotations

from django.apps import AppConfig


class TurboAsyncConfig(AppConfig):
    name = "turbo_async"
    verbose_name = "Turbo Streams (async)"

    def ready(self) -> None:
        # Imported here, once the app registry is ready: the checks register themselves, the
        # shared tasks join every Celery app, and autodiscover imports the apps' streams.py.
        from . import checks, deploy_checks, outbox, tasks  # noqa: F401
        from .wiring import autodiscover

        autodiscover()
        outbox.install_sigterm_drain()
