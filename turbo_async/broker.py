"""Layer 1: the Celery broker that broadcasts go through, as turbo_async reads it from the Celery app.

One place answers the questions the system checks, ``manage.py turbo_streams --check``, the
publishing outbox, delivery retries and the debounced refreshes ask about Celery's configuration:

- which app is current, and whether it is Celery's made-up fallback (:func:`fallback_app`);
- the broker a publish went to and where its URL came from, for the messages of a failed publish
  (:func:`describe_broker`);
- the broker's URL: as configured, to show without its password (:func:`broker_url`), and the
  URLs of a failover list, to connect to (:func:`broker_urls`);
- whether the broker is Redis (:func:`broker_is_redis`): ``redis://``, ``rediss://``,
  ``redis+socket://`` and Sentinel's ``sentinel://``, as kombu's Redis transports take them;
- the countdown a delayed task can be given (:func:`countdown`): with RabbitMQ quorum queues,
  Celery delays tasks in the broker, in whole seconds (native delayed delivery).

Example::

    from turbo_async import broker

    app = conf.celery_app()
    if broker.broker_is_redis(app):
        print("tasks wait in Redis for", broker.broker_url(app))
"""

from __future__ import annotations

import math
import os
from typing import Any

from celery import _state as celery_state
from django.conf import settings
from kombu.utils.url import maybe_sanitize_url

from . import conf

CELERY_DEFAULT_BROKER = "amqp://guest@localhost//"
"""Celery's own default when ``broker_url`` is unset (``celery.app.defaults``)."""

REDIS_SCHEMES = ("redis", "rediss", "sentinel")
"""URL schemes of kombu's Redis transports (``redis+socket://`` and the like are Redis too)."""
SENTINEL_SCHEMES = ("sentinel",)


def scheme(url: str) -> str:
    """The scheme of ``url``, lower-cased (``redis+socket`` stays whole)."""
    return url.partition("://")[0].strip().lower()


# -- the app ----------------------------------------------------------------------------------


def fallback_app(app: Any) -> bool:
    """Whether ``app`` is the app Celery makes up when no app was created in this process
    (``Celery("default", set_as_current=False)``: it reads no Django settings, so
    CELERY_BROKER_URL is ignored and tasks go to amqp://guest@localhost//). A project's app is
    ``set_as_current`` (the default) and has its own main name."""
    app = getattr(app, "_get_current_object", lambda: app)()
    return (
        not getattr(app, "set_as_current", True)
        and app.main in (None, "default")
        and app is getattr(celery_state, "default_app", None)
    )


def other_celery_apps(app: Any) -> list[str]:
    """Names of the apps of this process other than ``app`` (e.g. one made in another thread)."""
    current = getattr(app, "_get_current_object", lambda: app)()
    return sorted(
        {
            str(other.main)
            for other in list(celery_state._get_active_apps())  # type: ignore[attr-defined]
            if other is not current and (other.set_as_current or other.main not in (None, "default"))
        }
    )


# -- the broker's URL --------------------------------------------------------------------------

LOAD_APP_HINT = "add 'from .celery import app as celery_app' to proj/__init__.py"


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



def without_password(url: str) -> str:
    """``url`` (``;``-separated failover URLs too) with any password removed."""
    parts = []
    for one in url.split(";"):
        url_scheme, sep, rest = one.partition("://")
        netloc, slash, path = rest.partition("/")
        if sep and "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}@{host}" if user else host
        parts.append(f"{url_scheme}{sep}{netloc}{slash}{path}" if sep else one)
    return ";".join(parts)


def _configured(app: Any) -> str:
    url = app.conf.get("broker_write_url") or app.conf.broker_url
    if not url:
        return CELERY_DEFAULT_BROKER
    if isinstance(url, (list, tuple)):
        return ";".join(str(u) for u in url)
    return str(url)


def broker_url(app: Any) -> str:
    """The broker URL ``app`` publishes to, without password, as configured (no transport import)."""
    return without_password(_configured(app))


def broker_urls(app: Any) -> list[str]:
    """The URLs ``app`` publishes to, passwords included: one, or each of a failover list
    (``"redis://a;redis://b"``, a list, or Sentinel's ``"sentinel://s1;sentinel://s2"``)."""
    return [one.strip() for one in _configured(app).split(";") if one.strip()]


def transport(app: Any) -> str:
    """The kombu transport ``app`` publishes through, as named in its settings:
    ``broker_transport``, else the scheme of the first URL (``redis``, ``sentinel``, ``amqp``, ...)."""
    configured = app.conf.get("broker_transport")
    return str(configured).lower() if configured else scheme(broker_urls(app)[0])


def broker_is_redis(app: Any) -> bool:
    """Whether ``app`` publishes through kombu's Redis transport: ``redis``, ``rediss``,
    ``sentinel``, ``redis+socket``, ..."""
    name = transport(app)
    return name in REDIS_SCHEMES or name.startswith("redis+")


def broker_is_sentinel(app: Any) -> bool:
    """Whether ``app`` finds its Redis through Sentinel (``sentinel://`` URLs)."""
    return transport(app) in SENTINEL_SCHEMES


# -- delayed tasks ------------------------------------------------------------------------------

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def native_delayed_delivery(app: Any) -> bool:
    """Whether ``app`` delays countdown and ETA tasks in RabbitMQ (Celery's native delayed
    delivery, Celery 5.5+): with an AMQP broker, when a queue of the app is a quorum queue
    (``task_default_queue_type`` or ``task_create_missing_queue_type`` ``"quorum"``), as Celery's
    ``detect_quorum_queues`` decides when it publishes."""
    if transport(app) not in AMQP_SCHEMES:
        return False
    conf = app.conf
    if "quorum" in (conf.get("task_default_queue_type"), conf.get("task_create_missing_queue_type")):
        return True
    queues = conf.get("task_queues") or ()
    return any((getattr(q, "queue_arguments", None) or {}).get("x-queue-type") == "quorum" for q in queues)


def countdown(app: Any, seconds: float) -> float:
    """The countdown to publish a task delayed by ``seconds`` with.

    Celery's native delayed delivery routes a delayed task through RabbitMQ's
    ``celery_delayed_*`` queues by its countdown in whole seconds, rounded down, and refuses one
    below 1 s (``ValueError: countdown must be a positive number``). There a countdown is rounded
    up to the next whole second, so the task is never early and never refused; elsewhere it is
    ``seconds`` as given (never negative)."""
    seconds = max(seconds, 0.0)
    if seconds and native_delayed_delivery(app):
        return float(math.ceil(seconds))
    return seconds
