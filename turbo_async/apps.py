from __future__ import annotations

from django.apps import AppConfig


class TurboAsyncConfig(AppConfig):
    name = "turbo_async"
    verbose_name = "Turbo Streams (async)"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .registry import autodiscover

        autodiscover()
