"""System checks of turbo_async (``python manage.py check``)."""

from __future__ import annotations
