from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "demo.chat"
    label = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # RoomListStream is not a ModelStream, and streams.py stays the seed's code: register it
        # at start-up so that every web process accepts subscriptions to it.
        from . import broadcasts  # noqa: F401
