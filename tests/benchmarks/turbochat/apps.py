from __future__ import annotations

from django.apps import AppConfig


class TurboChatConfig(AppConfig):
    name = "tests.benchmarks.turbochat"
    label = "chat"  # demo.chat's label: the same tables, migrations and template names
    default_auto_field = "django.db.models.BigAutoField"
