"""Layer 0 (a leaf): the settings of turbo_async, read once from ``settings.TURBO_ASYNC`` and
validated, and the Celery app of the process.

Every key is optional::

    TURBO_ASYNC = {
        "QUEUE": None,                  # Celery queue of the broadcast tasks (None: the default queue)
        "ON_PUBLISH_ERROR": "log",      # broker down at commit: "log" the change, or run it "inline"
        "PUBLISH_IN_BACKGROUND": True,  # publish from a per-process thread, off the commit path
        "OUTBOX": "memory",             # or "database": changes written in the saving transaction
        "OUTBOX_MAX_SIZE": 10000,       # committed changes that may wait for that thread
        "OUTBOX_MAX_AGE": 600.0,        # seconds a change may wait for the broker before it is dropped
        "OUTBOX_RETRY_BACKOFF_MAX": 5.0,  # cap, in seconds, of the wait between attempts to publish
        "OUTBOX_EXIT_TIMEOUT": 5.0,     # seconds the outbox may take to drain at exit / SIGTERM
        "OUTBOX_SWEEP_INTERVAL": 30.0,  # "database": seconds between sweeps of rows left behind
        "OUTBOX_SWEEP_AFTER": 10.0,     # "database": rows older than this are a dead process's
        "BATCH_MAX_SIZE": 100,          # changes one Celery message may carry when they queue up
        "BATCH_LINGER": 0.002,          # seconds the outbox waits for more changes in a burst (0: off)
        "PUBLISH_MAX_RETRIES": 2,       # publish attempts after the first, at commit
        "PUBLISH_RETRY_INTERVAL": 0.2,  # seconds between publish attempts
        "DELIVERY_MAX_AGE": 120.0,      # seconds a broadcast keeps retrying an unreachable channel layer
        "DELIVERY_MAX_RETRIES": None,   # or a count of retries that also ends the wait (None: age only)
        "DELIVERY_RETRY_BACKOFF_MAX": 5,  # cap, in seconds, of the exponential retry backoff
        "DELIVERY_TIMEOUT": 10.0,       # seconds one group_send may take in a worker
        "SIGNING_SALT": "turbo_async.streams",
        "SIGNATURE_MAX_AGE": None,      # seconds a rendered subscription stays valid (None: forever)
        "WS_PATH": "/ws/",              # path the browser connects to
        "MAX_MESSAGE_BYTES": 16384,     # larger WebSocket messages from a client are refused
        "MAX_SUBSCRIPTIONS": 100,       # subscriptions one socket may hold
        # Abuse budgets of one WebSocket (docs/security.rst, "Limits per socket"):
        "MAX_MESSAGES_PER_SECOND": 20.0,  # sustained client messages per socket (0: no limit)
        "MESSAGE_BURST": 200,           # messages a socket may send at once; beyond: closed, 1008
        "LOGGED_REFUSALS_PER_SOCKET": 5,  # refusal warnings logged per socket, then only counted
        "LOGGED_REFUSALS_PER_MINUTE": 100,  # refusal and abuse lines per process a minute (0: no limit)
        "LAYER_CONCURRENCY": 50,        # channel-layer calls the sockets of a process make at once
        "LAYER_WAIT_TIMEOUT": 30.0,     # seconds a group add/discard waits for a pooled connection
        # Refreshes (turbo_async.refreshes): agreed between workers in the channel layer's Redis.
        "REFRESH_DEBOUNCE": 0.5,        # seconds: a stream's refreshes this close become one (0: off)
        "REFRESH_MAX_WAIT": 5.0,        # seconds: changes that never pause still refresh this often
        # Delivery to the page (docs/guarantees.rst, "Delivery to the page"):
        "HEARTBEAT_INTERVAL": 10.0,     # seconds between pings (and group renewals) per socket; 0: off
        "RENEW_INTERVAL": 1.0,          # seconds between a web process's group renewals and gap checks; 0: off
        "OFFSETS": True,                # give each publication its stream's (epoch, offset)
        "HISTORY_SIZE": 100,            # publications per stream kept in Redis for catch-up (0: none)
        "HISTORY_MAX_AGE": 300.0,       # seconds a publication stays replayable
        # Metrics (turbo_async.metrics, docs/monitoring.rst); need pip install "turbo-async[metrics]":
        "METRICS": False,               # Prometheus metrics and the status records of --status
        "METRICS_PATH": "/metrics",     # where a web process serves them (turbo_async.routing.with_metrics)
        "METRICS_PORT": None,           # the port a Celery worker serves them on (None: it does not)
        "METRICS_ADDRESS": "127.0.0.1",  # the address it binds ("0.0.0.0": every interface)
        "STATUS_INTERVAL": 5.0,         # seconds between a web process's status records in Redis (0: none)
    }

Publishing runs on a per-process background thread (``PUBLISH_IN_BACKGROUND``): a commit only
hands its changes over. In Celery's eager mode, inside a task, and with the setting off, the
commit publishes them itself.

Bounds (docs/guarantees.rst): with the broker down, the publisher spends at most
``PUBLISH_MAX_RETRIES + 1`` publish attempts and ``PUBLISH_MAX_RETRIES * PUBLISH_RETRY_INTERVAL``
seconds of waiting between them (about 0.2 s with the defaults when the connection is refused).
Each attempt against a broker that accepts connections but never answers lasts up to the
transport's ``socket_timeout``, which kombu leaves unset: set
``CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 2, "socket_connect_timeout": 2}`` or a
frozen broker blocks the save. A task whose ``group_send`` fails is retried
after ``min(DELIVERY_RETRY_BACKOFF_MAX, 2**n)`` seconds times a jitter of 0.5 to 1, for as long as
its first failure is less than ``DELIVERY_MAX_AGE`` seconds old (and at most
``DELIVERY_MAX_RETRIES`` times, when set). Past that its frames are given up, logged at ERROR, and
its streams' pages are made to refresh as soon as the layer answers (a new epoch): a change is
delivered, late and in order, or its pages refresh; never silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from importlib.util import find_spec
from typing import Any

from celery import current_app
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

ON_PUBLISH_ERROR_CHOICES = ("log", "inline")
NULLABLE = ("QUEUE", "SIGNATURE_MAX_AGE", "DELIVERY_MAX_RETRIES", "METRICS_PORT")
OUTBOX_CHOICES = ("memory", "database")
AT_LEAST_ONE = (
    "OUTBOX_MAX_SIZE", "BATCH_MAX_SIZE", "MAX_MESSAGE_BYTES", "MESSAGE_BURST", "LAYER_CONCURRENCY",
)
"""Counts and sizes for which 0 would switch the feature off by accident (1 disables batching)."""


@dataclass(frozen=True)
class TurboAsyncSettings:
    QUEUE: str | None = None
    ON_PUBLISH_ERROR: str = "log"
    PUBLISH_IN_BACKGROUND: bool = True
    OUTBOX: str = "memory"
    OUTBOX_MAX_SIZE: int = 10000
    OUTBOX_MAX_AGE: float = 600.0
    OUTBOX_RETRY_BACKOFF_MAX: float = 5.0
    OUTBOX_EXIT_TIMEOUT: float = 5.0
    OUTBOX_SWEEP_INTERVAL: float = 30.0
    OUTBOX_SWEEP_AFTER: float = 10.0
    BATCH_MAX_SIZE: int = 100
    BATCH_LINGER: float = 0.002
    PUBLISH_MAX_RETRIES: int = 2
    PUBLISH_RETRY_INTERVAL: float = 0.2
    DELIVERY_MAX_AGE: float = 120.0
    DELIVERY_MAX_RETRIES: int | None = None
    DELIVERY_RETRY_BACKOFF_MAX: int = 5
    DELIVERY_TIMEOUT: float = 10.0
    SIGNING_SALT: str = "turbo_async.streams"
    SIGNATURE_MAX_AGE: int | None = None
    WS_PATH: str = "/ws/"
    MAX_MESSAGE_BYTES: int = 16384
    MAX_SUBSCRIPTIONS: int = 100
    # Abuse budgets of one WebSocket (turbo_async.security, docs/security.rst).
    MAX_MESSAGES_PER_SECOND: float = 20.0
    MESSAGE_BURST: int = 200
    LOGGED_REFUSALS_PER_SOCKET: int = 5
    LOGGED_REFUSALS_PER_MINUTE: int = 100
    LAYER_CONCURRENCY: int = 50
    LAYER_WAIT_TIMEOUT: float = 30.0
    # Refreshes (turbo_async.refreshes)
    REFRESH_DEBOUNCE: float = 0.5
    REFRESH_MAX_WAIT: float = 5.0
    # Delivery to the page (turbo_async.consumers, turbo_async.history, docs/guarantees.rst).
    HEARTBEAT_INTERVAL: float = 10.0
    RENEW_INTERVAL: float = 1.0
    OFFSETS: bool = True
    HISTORY_SIZE: int = 100
    HISTORY_MAX_AGE: float = 300.0
    # Metrics (turbo_async.metrics, docs/monitoring.rst).
    METRICS: bool = False
    METRICS_PATH: str = "/metrics"
    METRICS_PORT: int | None = None
    METRICS_ADDRESS: str = "127.0.0.1"
    STATUS_INTERVAL: float = 5.0


def _validate(name: str, value: Any, expected: type | tuple[type, ...], *, nullable: bool) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, expected):
        kinds = expected if isinstance(expected, tuple) else (expected,)
        wanted = " or ".join(k.__name__ for k in kinds) + (" or None" if nullable else "")
        raise ImproperlyConfigured(
            f"TURBO_ASYNC[{name!r}] must be {wanted}, not {value!r}."
        )


def load(raw: Any) -> TurboAsyncSettings:
    """Validate a ``TURBO_ASYNC`` dict and return the settings object."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"TURBO_ASYNC must be a dict, not {type(raw).__name__}.")
    known = {f.name: f for f in fields(TurboAsyncSettings)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown TURBO_ASYNC key(s): {', '.join(map(repr, unknown))}. "
            f"Valid keys are: {', '.join(sorted(known))}."
        )
    defaults = TurboAsyncSettings()
    for name, value in raw.items():
        default = getattr(defaults, name)
        nullable = name in NULLABLE
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ImproperlyConfigured(f"TURBO_ASYNC[{name!r}] must be True or False, not {value!r}.")
        elif isinstance(default, str) or name == "QUEUE":
            _validate(name, value, str, nullable=nullable)
        elif isinstance(default, float):
            _validate(name, value, (int, float), nullable=nullable)
        else:
            _validate(name, value, int, nullable=nullable)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ImproperlyConfigured(f"TURBO_ASYNC[{name!r}] must not be negative, not {value!r}.")
        if name in AT_LEAST_ONE and value < 1:
            raise ImproperlyConfigured(f"TURBO_ASYNC[{name!r}] must be at least 1, not {value!r}.")
        if name == "BATCH_LINGER" and value > 1:
            # Every change of a burst waits this long: a few milliseconds are what it is for.
            raise ImproperlyConfigured(
                f"TURBO_ASYNC['BATCH_LINGER'] is in seconds and must be at most 1, not {value!r} "
                "(the default, 0.002, is 2 ms)."
            )
    choice = raw.get("ON_PUBLISH_ERROR", defaults.ON_PUBLISH_ERROR)
    if choice not in ON_PUBLISH_ERROR_CHOICES:
        raise ImproperlyConfigured(
            f"TURBO_ASYNC['ON_PUBLISH_ERROR'] must be one of {ON_PUBLISH_ERROR_CHOICES}, not {choice!r}."
        )
    outbox = raw.get("OUTBOX", defaults.OUTBOX)
    if outbox not in OUTBOX_CHOICES:
        raise ImproperlyConfigured(
            f"TURBO_ASYNC['OUTBOX'] must be one of {OUTBOX_CHOICES}, not {outbox!r}."
        )
    ws_path = raw.get("WS_PATH", defaults.WS_PATH)
    if not (ws_path.startswith("/") and ws_path.endswith("/")):
        raise ImproperlyConfigured(
            f"TURBO_ASYNC['WS_PATH'] must start and end with '/', like '/ws/', not {ws_path!r}."
        )
    metrics_path = raw.get("METRICS_PATH", defaults.METRICS_PATH)
    if not metrics_path.startswith("/"):
        raise ImproperlyConfigured(
            f"TURBO_ASYNC['METRICS_PATH'] must start with '/', like '/metrics', not {metrics_path!r}."
        )
    port = raw.get("METRICS_PORT")
    if port is not None and not 0 < port < 65536:
        raise ImproperlyConfigured(f"TURBO_ASYNC['METRICS_PORT'] must be a port number (1 to 65535), not {port!r}.")
    if raw.get("METRICS") and find_spec("prometheus_client") is None:
        raise ImproperlyConfigured(
            "TURBO_ASYNC['METRICS'] is on but prometheus_client is not installed: "
            "pip install \"turbo-async[metrics]\"."
        )
    debounce = raw.get("REFRESH_DEBOUNCE", defaults.REFRESH_DEBOUNCE)
    max_wait = raw.get("REFRESH_MAX_WAIT", defaults.REFRESH_MAX_WAIT)
    if max_wait < debounce:
        raise ImproperlyConfigured(
            f"TURBO_ASYNC['REFRESH_MAX_WAIT'] ({max_wait!r}) must not be shorter than "
            f"TURBO_ASYNC['REFRESH_DEBOUNCE'] ({debounce!r})."
        )
    return TurboAsyncSettings(**raw)


def celery_app() -> Any:
    """The Celery app of this process (the project's, once ``proj/__init__.py`` loaded it)."""
    return current_app  # Celery's proxy: the app current at the time of each call


@lru_cache(maxsize=1)
def get() -> TurboAsyncSettings:
    """The current settings, validated once and cached until ``TURBO_ASYNC`` changes."""
    return load(getattr(django_settings, "TURBO_ASYNC", None))


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "TURBO_ASYNC":
        get.cache_clear()
