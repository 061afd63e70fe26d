"""The worker service: ``celery -A workers worker``."""

from .celery import app

__all__ = ["app"]
