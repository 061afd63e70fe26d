"""Layer 1: the broker this process publishes to, and where its URL came from.

A publish that fails says which broker it tried, so that a wrong URL does not read as a broker
that is down: :func:`describe_broker` gives the URL (password masked) and its source, such as
``redis://127.0.0.1:6379/0 (the CELERY_BROKER_URL setting, read by the Celery app 'proj')`` or,
when no Celery app was loaded, ``amqp://guest:**@localhost:5672// (Celery's default broker: ...)``
with what to add to ``proj/__init__.py``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import _state as celery_state
from django.conf import settings
from kombu.utils.url import maybe_sanitize_url

from . import conf

LOAD_APP_HINT = "add 'from .celery import app as celery_app' to proj/__init__.py"


def fallback_app(app: Any) -> bool:
    """Whether ``app`` is the app Celery makes up when no app was created in this process
    (``Celery("default", set_as_current=False)``: it reads no Django settings)."""
    app = getattr(app, "_get_current_object", lambda: app)()
    return (
        not getattr(app, "set_as_current", True)
        and app.main in (None, "default")
        and app is getattr(celery_state, "default_app", None)
    )


def broker_uri(app: Any) -> str:
    """The URL ``app`` publishes to as kombu resolves it (default port included), password
    masked as ``**``."""
    try:
        with app.connection_for_write() as connection:
            return str(maybe_sanitize_url(connection.as_uri(include_password=True)))
    except Exception:  # e.g. the transport's library is missing: the configured URL then
        url = app.conf.broker_write_url
        if isinstance(url, (list, tuple)):
            url = ";".join(map(str, url))
        return str(maybe_sanitize_url(url)) if url else "amqp://guest:**@localhost:5672//"


def broker_source(app: Any) -> str:
    """Where ``app``'s broker URL came from, as Celery looks for it (the environment first)."""
    app = getattr(app, "_get_current_object", lambda: app)()
    for variable in ("CELERY_BROKER_WRITE_URL", "CELERY_BROKER_URL"):
        if os.environ.get(variable):
            return f"the {variable} environment variable"
    if fallback_app(app):
        ignored = (
            ", so the CELERY_BROKER_URL setting is ignored" if getattr(settings, "CELERY_BROKER_URL", None) else ""
        )
        return f"Celery's default broker: no Celery app is loaded in this process{ignored}; {LOAD_APP_HINT}"
    name = repr(app.main)
    if app.conf.get("broker_write_url"):
        return f"broker_write_url of the Celery app {name}"
    url = app.conf.get("broker_url")
    if not url:
        return f"Celery's default broker: the Celery app {name} has no broker_url; set CELERY_BROKER_URL"
    if url == getattr(settings, "CELERY_BROKER_URL", None):
        return f"the CELERY_BROKER_URL setting, read by the Celery app {name}"
    return f"broker_url of the Celery app {name}"


def describe_broker(app: Any = None) -> str:
    """``redis://127.0.0.1:6379/0 (the CELERY_BROKER_URL setting, read by the Celery app 'proj')``:
    the broker ``app`` (by default this process's Celery app) publishes to, and why that one."""
    app = conf.celery_app() if app is None else app
    return f"{broker_uri(app)} ({broker_source(app)})"
