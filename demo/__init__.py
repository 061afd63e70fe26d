"""The demo project. Importing the worker service's Celery app here makes it the current app in
every process that loads Django (web, manage.py), so broadcasts are published to REDIS_URL and not
to Celery's default broker (the usual ``proj/__init__.py`` of Celery's Django guide)."""

from __future__ import annotations

from workers import app as celery_app

__all__ = ["celery_app"]
