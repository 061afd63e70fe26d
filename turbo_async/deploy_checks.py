"""Layer 10: turbo_async's deployment checks, run by ``python manage.py check --deploy``.

They point at settings that work on a laptop and hurt in production: a WebSocket route that any
site may open, subscriptions that never expire, a broker that hands a task out twice, an outbox
that a killed process empties, the demo's own settings. ``docs/checks.rst`` ("Deployment checks")
explains each id and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from . import conf
from .broker import broker_is_redis, fallback_app
from .security import accepts_any_origin, origin_validator_of

TAG = "turbo_async"
DEMO_SETTINGS = "demo.settings"
DEMO_KEY_FILE = Path(".demo") / "secret_key"
"""Where ``make demo`` keeps the key it generated, beside the demo package (demo/run.py)."""


@checks.register(TAG, checks.Tags.security, deploy=True)
def check_websocket_origins(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W101: the WebSocket route of ``ASGI_APPLICATION`` has no origin check that refuses other
    sites. (With ``ALLOWED_HOSTS = ["*"]`` W009 says so already, in every run.)"""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path or "*" in list(getattr(settings, "ALLOWED_HOSTS", [])):
        return []
    try:
        application = import_string(path)
    except Exception:  # W009 and the server report an application that does not import
        return []
    check = origin_validator_of(application)
    if not accepts_any_origin(check):
        return []
    return [
        checks.Warning(
            f"The WebSocket route of {path} has no origin check: any other site can open a WebSocket "
            "to yours with your visitors' cookies and subscribe to what they may see.",
            hint=(
                'Wrap the routes: "websocket": OriginValidator(AuthMiddlewareStack(URLRouter('
                "turbo_async.routing.websocket_urlpatterns))), with OriginValidator from "
                "turbo_async.security."
            ),
            id="turbo_async.W101",
        )
    ]


@checks.register(TAG, checks.Tags.security, deploy=True)
def check_signature_max_age(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W102: signed subscription names never expire."""
    if conf.get().SIGNATURE_MAX_AGE is not None:
        return []
    return [
        checks.Warning(
            "TURBO_ASYNC['SIGNATURE_MAX_AGE'] is None: a page's signed subscription names never "
            "expire, so a copy of its HTML (a cache, a shared or leaked page) keeps subscribing to "
            "its streams for as long as SECRET_KEY and SIGNING_SALT stay the same.",
            hint=(
                "Set TURBO_ASYNC = {'SIGNATURE_MAX_AGE': 86400} (seconds): a page older than that "
                "refreshes itself when it reconnects, and gets new names."
            ),
            id="turbo_async.W102",
        )
    ]


def shortest_visibility_timeout() -> float:
    """The shortest ``visibility_timeout`` that never hands a waiting broadcast task out twice:
    a retried delivery waits up to ``DELIVERY_RETRY_BACKOFF_MAX`` and a debounced refresh up to
    ``REFRESH_MAX_WAIT`` in the worker, unacknowledged, and the attempt then takes up to
    ``DELIVERY_TIMEOUT``."""
    settings_ = conf.get()
    return max(settings_.DELIVERY_RETRY_BACKOFF_MAX, settings_.REFRESH_MAX_WAIT) + settings_.DELIVERY_TIMEOUT


@checks.register(TAG, deploy=True)
def check_visibility_timeout(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W103: a Redis broker's ``visibility_timeout`` shorter than a broadcast task may wait."""
    app = conf.celery_app()
    if app.conf.task_always_eager or fallback_app(app) or not broker_is_redis(app):
        return []
    timeout = (app.conf.broker_transport_options or {}).get("visibility_timeout")
    floor = shortest_visibility_timeout()
    if timeout is None or timeout > floor:  # unset: W008 (every run)
        return []
    return [
        checks.Warning(
            f"CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] is {timeout} s, not more than "
            f"{floor:g} s (DELIVERY_RETRY_BACKOFF_MAX or REFRESH_MAX_WAIT, plus DELIVERY_TIMEOUT): "
            "a broadcast task that waits that long for its retry or its refresh is handed out a "
            "second time by Redis while the first worker still holds it.",
            hint=(
                "Set visibility_timeout above your slowest hook plus DELIVERY_RETRY_BACKOFF_MAX; "
                "300 is what docs/deployment.rst recommends."
            ),
            id="turbo_async.W103",
        )
    ]


@checks.register(TAG, deploy=True)
def check_outbox(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """I104: the memory outbox loses what a killed web process had not published yet."""
    if conf.get().OUTBOX != "memory" or not conf.get().PUBLISH_IN_BACKGROUND:
        return []
    return [
        checks.Info(
            "TURBO_ASYNC['OUTBOX'] is 'memory': the broadcasts a web process committed but had not "
            "published yet (milliseconds' worth; all of them while the broker is down) are lost if "
            "the process is killed (SIGKILL, out of memory, a lost machine). The rows are saved; "
            "the pages show the change at their next load.",
            hint=(
                "Where that matters, set TURBO_ASYNC = {'OUTBOX': 'database'} and run manage.py "
                "migrate: each change is then written in the saving transaction, and a worker "
                "publishes what a dead process left."
            ),
            id="turbo_async.I104",
        )
    ]


def _demo_key_file() -> Path | None:
    spec = find_spec(DEMO_SETTINGS)  # found, not imported again
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).resolve().parent.parent / DEMO_KEY_FILE
    return path if path.is_file() else None


@checks.register(TAG, checks.Tags.security, deploy=True)
def check_demo_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W105: the demo project, deployed with DEBUG on or with the key ``make demo`` made."""
    if getattr(settings, "SETTINGS_MODULE", None) != DEMO_SETTINGS:
        return []
    problems = []
    if settings.DEBUG:
        problems.append("DEBUG is on (DJANGO_DEBUG=1), which shows settings and tracebacks to anyone")
    key_file = _demo_key_file()
    if key_file is not None and key_file.read_text().strip() == settings.SECRET_KEY:
        problems.append(
            f"SECRET_KEY is the one make demo generated and keeps in {key_file}, a file in the "
            "checkout"
        )
    if not problems:
        return []
    return [
        checks.Warning(
            "These are turbo_async's demo settings, and " + "; and ".join(problems) + ". The demo "
            "also has no accounts: anyone who reaches it can post, edit and delete every message.",
            hint=(
                "Deploy your own project. To run the demo beyond your machine anyway, set "
                "DJANGO_DEBUG=0 and a DJANGO_SECRET_KEY of its own, as compose.yaml asks."
            ),
            id="turbo_async.W105",
        )
    ]
