"""Layer 10: the system checks of turbo_async (``python manage.py check``).

Each check points at a configuration under which broadcasts would silently never reach a browser,
or would land back on the request path. ``docs/checks.rst`` explains every id and how to fix it.
At a little over 500 lines it is one check function per id, each short; the deployment checks
(``check --deploy``) live in :mod:`turbo_async.deploy_checks`.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string

from . import conf
from .broker import (
    CELERY_DEFAULT_BROKER,
    broker_is_redis,
    broker_url,
    fallback_app,
    other_celery_apps,
    without_password,
)
from .registry import dotted_path as _dotted, stream_registry
from .security import accepts_any_origin, origin_validator_of
from .streams import ModelStream

HOOKS = tuple(ModelStream.hooks.values())

TAG = "turbo_async"

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
CORE_LAYER = "channels_redis.core.RedisChannelLayer"
PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
REDIS_LAYERS = (CORE_LAYER, PUBSUB_LAYER)

# Names people reach for when they mean on_save / on_delete (Rails, Laravel and signal habits).
MISSPELLED_HOOKS = {
    "on_saved": "on_save",
    "on_create": "on_save",
    "on_created": "on_save",
    "on_update": "on_save",
    "on_updated": "on_save",
    "post_save": "on_save",
    "on_deleted": "on_delete",
    "on_destroy": "on_delete",
    "on_destroyed": "on_delete",
    "on_remove": "on_delete",
    "post_delete": "on_delete",
}

HOOK_CALLS = {
    "on_save": "on_save(instance, created=..., sender=Model, using=alias)",
    "on_delete": "on_delete(instance, sender=Model, using=alias)",
}
HOOK_SIGNATURES = {
    "on_save": "def on_save(self, instance, created, *args, **kwargs)",
    "on_delete": "def on_delete(self, instance, *args, **kwargs)",
}


# -- channel layer ---------------------------------------------------------------------------


@checks.register(TAG)
def check_channel_layer(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    layer = layers.get("default") if isinstance(layers, dict) else None
    if not isinstance(layer, dict) or not layer.get("BACKEND"):
        return [
            checks.Error(
                "No channel layer is configured, so broadcasts have nowhere to go.",
                hint=(
                    "Set CHANNEL_LAYERS = {'default': {'BACKEND': "
                    "'channels_redis.pubsub.RedisPubSubChannelLayer', 'CONFIG': {'hosts': "
                    "[{'address': 'redis://localhost:6379/0', 'socket_timeout': None}]}}}."
                ),
                id="turbo_async.E001",
            )
        ]
    backend = str(layer["BACKEND"])
    if _is_layer(backend, IN_MEMORY_LAYER) and not _celery_app().conf.task_always_eager:
        return [
            checks.Error(
                "CHANNEL_LAYERS uses the in-memory layer while broadcasts run in Celery worker "
                "processes: frames sent by a worker stay in that worker's memory and never reach "
                "a browser.",
                hint=(
                    "Use a layer that processes share, channels_redis.pubsub.RedisPubSubChannelLayer "
                    "(the in-memory layer only works when CELERY_TASK_ALWAYS_EAGER runs tasks in "
                    "the web process, i.e. in tests)."
                ),
                id="turbo_async.E002",
            )
        ]
    # Only the core layer blocks on reads: the pub/sub layer polls its subscriber connection with
    # a 0.1 s timeout of its own, and an idle pub/sub socket still received after 15 s with
    # redis-py 8's default socket_timeout, so W001/W002 would be noise there.
    if _is_layer(backend, CORE_LAYER):
        return _check_redis_hosts(layer.get("CONFIG") or {})
    return []


def _is_layer(backend: str, dotted: str) -> bool:
    if backend == dotted:
        return True
    try:
        backend_class = import_string(backend)
        base = import_string(dotted)
    except ImportError:
        return False
    return isinstance(backend_class, type) and issubclass(backend_class, base)


def _redis_major_version() -> int:
    try:
        import redis
    except ImportError:  # pragma: no cover - channels_redis depends on it
        return 0
    try:
        return int(str(redis.__version__).split(".")[0])
    except ValueError:  # pragma: no cover
        return 0


def _check_redis_hosts(config: dict[str, Any]) -> list[checks.CheckMessage]:
    # redis-py 8 gives every connection socket_timeout=5; channels_redis blocks on reads, so
    # a WebSocket that receives nothing for 5 s loses its reader (channels_redis #422).
    if _redis_major_version() < 8:
        return []
    hosts = config.get("hosts") or [("localhost", 6379)]
    if isinstance(hosts, (str, bytes)):
        hosts = [hosts]
    messages: list[checks.CheckMessage] = []
    for host in hosts:
        if isinstance(host, dict):
            if "socket_timeout" not in host or host["socket_timeout"] is not None:
                shown = {k: v for k, v in host.items() if k != "password"}
                messages.append(
                    checks.Warning(
                        f"The channel layer host {shown!r} has no \"socket_timeout\": None. "
                        "Under redis-py 8 idle sockets time out after 5 seconds, and a page that "
                        "receives nothing for that long stops receiving broadcasts.",
                        hint=f"Add \"socket_timeout\": None to it: {_with_timeout(host)!r}.",
                        id="turbo_async.W001",
                    )
                )
        else:
            messages.append(
                checks.Warning(
                    f"The channel layer host {host!r} is not a dict, so it cannot set "
                    "\"socket_timeout\": None. Under redis-py 8 idle sockets time out after 5 "
                    "seconds, and a page that receives nothing for that long stops receiving "
                    "broadcasts.",
                    hint=f"Write the host as a dict: {_as_dict(host)!r}.",
                    id="turbo_async.W002",
                )
            )
    return messages


def _with_timeout(host: dict[str, Any]) -> dict[str, Any]:
    fixed = {k: ("..." if k == "password" else v) for k, v in host.items()}
    fixed["socket_timeout"] = None
    return fixed


def _as_dict(host: Any) -> dict[str, Any]:
    if isinstance(host, (tuple, list)) and len(host) == 2:
        address = f"redis://{host[0]}:{host[1]}"
    else:
        address = str(host.decode() if isinstance(host, bytes) else host)
    return {"address": address, "socket_timeout": None}


# -- Celery ----------------------------------------------------------------------------------


_celery_app = conf.celery_app


def running_tests() -> bool:
    """Whether Django's test environment is set up (``manage.py test``, pytest-django)."""
    from django.core import mail

    return hasattr(mail, "outbox") or sys.argv[1:2] == ["test"]


@checks.register(TAG)
def check_celery(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    app = _celery_app()
    celery_conf = app.conf
    messages: list[checks.CheckMessage] = []
    if celery_conf.task_always_eager:
        if not running_tests():
            messages.append(
                checks.Warning(
                    "Celery's task_always_eager is on: every broadcast runs its hook, renders and "
                    "sends inside the request that saved the row, which is what turbo_async "
                    "exists to avoid.",
                    hint=(
                        "Remove CELERY_TASK_ALWAYS_EAGER outside tests and run a worker "
                        "(celery -A proj worker)."
                    ),
                    id="turbo_async.W004",
                )
            )
        return messages
    load_hint = (
        "Load your Celery app in every process that loads Django: proj/__init__.py needs "
        "'from .celery import app as celery_app' (Celery's Django guide), with proj/celery.py "
        "calling app.config_from_object('django.conf:settings', namespace='CELERY')."
    )
    if fallback_app(app):
        # CELERY_BROKER_URL does not help here: only an app configured from the settings reads it.
        setting = getattr(settings, "CELERY_BROKER_URL", None)
        ignored = (
            f" CELERY_BROKER_URL ({without_password(str(setting))}) is set but ignored: no app "
            "reads it."
            if setting
            else ""
        )
        others = other_celery_apps(app)
        elsewhere = (
            f" (The app(s) {', '.join(repr(n) for n in others)} exist but are not current here: "
            "create your app before anything uses celery.current_app.)"
            if others
            else ""
        )
        messages.append(
            checks.Warning(
                "No Celery app is loaded in this process, so broadcast tasks go to Celery's "
                f"default app and its broker {broker_url(app)}.{ignored}{elsewhere}",
                hint=load_hint,
                id="turbo_async.W003",
            )
        )
        return messages
    configured = (
        celery_conf.broker_url
        or celery_conf.get("broker_write_url")
        or getattr(settings, "CELERY_BROKER_URL", None)
    )
    if not configured:
        messages.append(
            checks.Warning(
                f"The Celery app {app.main!r} has no broker_url, so broadcast tasks go to "
                f"Celery's default broker {CELERY_DEFAULT_BROKER}.",
                hint=(
                    "Set CELERY_BROKER_URL (e.g. 'redis://localhost:6379/0') and make sure the "
                    "app reads it (app.config_from_object('django.conf:settings', "
                    "namespace='CELERY'))."
                ),
                id="turbo_async.W003",
            )
        )
    return messages


# -- redelivery (Redis as broker) ------------------------------------------------------------

# kombu's Redis transport: the defaults it restores unacknowledged tasks with
# (kombu.transport.redis.Channel: visibility_timeout, unacked_restore_interval and _throttle).
KOMBU_VISIBILITY_TIMEOUT = 3600
KOMBU_RESTORE_SWEEP = 10 * 10  # unacked_restore_interval (10 s) x unacked_restore_throttle (10)
# What README.md, the demo and docs/deployment.rst set: a killed worker's task returns within
# visibility_timeout + unacked_restore_interval x unacked_restore_throttle = 310 s.
RECOMMENDED_TRANSPORT_OPTIONS: dict[str, int] = {
    "visibility_timeout": 300,
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}


@checks.register(TAG)
def check_redelivery(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    app = _celery_app()
    # Eager tasks never reach a broker (W004 says so outside tests); Celery's fallback app reads
    # none of the settings (W003 says so): neither would be helped by this warning.
    if app.conf.task_always_eager or fallback_app(app) or not broker_is_redis(app):
        return []
    options = app.conf.broker_transport_options or {}
    if "visibility_timeout" in options:
        return []
    return [
        checks.Warning(
            f"Redis is the Celery broker ({broker_url(app)}) and CELERY_BROKER_TRANSPORT_OPTIONS "
            "sets no visibility_timeout: a broadcast whose worker dies mid-task (SIGKILL, out of "
            f"memory, a lost machine) is handed out again only after kombu's default of "
            f"{KOMBU_VISIBILITY_TIMEOUT:,} s, plus up to {KOMBU_RESTORE_SWEEP} s until its restore "
            "sweep runs.",
            hint=(
                f"Set CELERY_BROKER_TRANSPORT_OPTIONS = {RECOMMENDED_TRANSPORT_OPTIONS!r}: a killed "
                "worker's task then returns within about 310 s. Keep visibility_timeout above your "
                "slowest hook plus DELIVERY_RETRY_BACKOFF_MAX, or a task still running is handed "
                "out a second time."
            ),
            id="turbo_async.W008",
        )
    ]


# -- runserver -------------------------------------------------------------------------------

# Commands that serve WSGI only: a WebSocket request to them is an ordinary 404.
WSGI_RUNSERVERS = ("django.core", "django.contrib.staticfiles")


def running_runserver() -> bool:
    """Whether this process is ``manage.py runserver`` (``django-admin``, ``python -m django``)."""
    return sys.argv[1:2] == ["runserver"]


@checks.register(TAG)
def check_runserver(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # runserver runs the checks as it starts; outside it this says nothing.
    if not running_runserver():
        return []
    from django.core.management import get_commands

    # The first installed app that defines runserver wins; daphne's serves ASGI (WebSockets).
    provider = get_commands().get("runserver", "django.core")
    if provider not in WSGI_RUNSERVERS:
        return []
    apps = list(getattr(settings, "INSTALLED_APPS", []))
    problem = (
        "'daphne' is in INSTALLED_APPS after 'django.contrib.staticfiles', whose WSGI runserver "
        "wins."
        if "daphne" in apps
        else "'daphne' is not in INSTALLED_APPS."
    )
    return [
        checks.Warning(
            "manage.py runserver is Django's WSGI development server here: pages load, but the "
            "WebSocket of {% turbo_subscribe %} gets a 404, so no broadcast reaches a browser. "
            + problem,
            hint=(
                "Put 'daphne' first in INSTALLED_APPS (pip install daphne) and set "
                "ASGI_APPLICATION = 'proj.asgi.application'; or serve the ASGI app instead: "
                "uvicorn proj.asgi:application (with uvicorn[standard] for WebSockets)."
            ),
            id="turbo_async.W007",
        )
    ]


# -- origins ---------------------------------------------------------------------------------


@checks.register(TAG, checks.Tags.security)
def check_origins(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """With ``ALLOWED_HOSTS = ["*"]``, is the WebSocket route of ``ASGI_APPLICATION`` guarded by
    an origin check that does not read ALLOWED_HOSTS? Any other site could otherwise open a
    socket with the visitor's cookies. The route is found by importing ``ASGI_APPLICATION``
    and following its ``"websocket"`` entry through the middleware (:func:`origin_validator_of`);
    when that cannot be done the check says so, since it cannot prove the route safe."""
    if "*" not in list(getattr(settings, "ALLOWED_HOSTS", [])):
        return []
    hint = (
        "Wrap the WebSocket routes in turbo_async.security.OriginValidator (it accepts the "
        "page's own scheme, host and port and CSRF_TRUSTED_ORIGINS, whatever ALLOWED_HOSTS "
        "says), or list your hosts in ALLOWED_HOSTS."
    )
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        problem = (
            "ASGI_APPLICATION is not set, so this check cannot see which origin check guards the "
            "WebSocket route; Channels' AllowedHostsOriginValidator lets every origin in."
        )
    else:
        try:
            application = import_string(path)
        except Exception as exc:  # an import error of the user's module: report it, do not crash
            problem = f"ASGI_APPLICATION {path!r} could not be imported ({exc!r}) to see its origin check."
        else:
            if not accepts_any_origin(origin_validator_of(application)):
                return []
            problem = (
                f"The WebSocket route of {path} accepts every origin (no origin check, or "
                "AllowedHostsOriginValidator, which lets everything in with '*')."
            )
    return [
        checks.Warning(
            "ALLOWED_HOSTS contains '*'. " + problem + " Another site can open a WebSocket with "
            "your visitors' cookies and subscribe to what they may see.",
            hint=hint,
            id="turbo_async.W009",
        )
    ]


# -- streams ---------------------------------------------------------------------------------


def _model_stream_classes() -> Iterator[type[ModelStream[Any]]]:
    """Every concrete ModelStream defined at module level, registered or not."""
    seen: set[type[Any]] = set()
    stack: list[type[Any]] = [ModelStream]
    while stack:
        cls = stack.pop()
        subclasses: list[type[Any]] = cls.__subclasses__()
        for sub in subclasses:
            if sub in seen:
                continue
            seen.add(sub)
            stack.append(sub)
            if sub._meta.get("abstract", False) or "<locals>" in sub.__qualname__:
                continue
            module = sys.modules.get(sub.__module__)
            if module is None or getattr(module, sub.__name__, None) is not sub:
                continue
            yield sub


@checks.register(TAG)
def check_streams(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    registered = set(stream_registry.model_streams.values())
    classes = sorted(set(_model_stream_classes()) | registered, key=_dotted)
    for cls in classes:
        messages.extend(_check_hook_names(cls))
        messages.extend(_check_hook_signatures(cls))
        if cls not in registered:
            messages.append(_unregistered(cls))
    return messages


def _own_methods(cls: type) -> Iterator[tuple[str, type]]:
    """Callable attributes defined by ``cls`` and its bases below ModelStream."""
    for klass in cls.__mro__:
        if klass in ModelStream.__mro__:
            break
        for name, value in vars(klass).items():
            if callable(value) or isinstance(value, (staticmethod, classmethod)):
                yield name, klass


def _check_hook_names(cls: type[ModelStream[Any]]) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    reported: set[str] = set()
    for name, klass in _own_methods(cls):
        if name in HOOKS or name in reported or name.startswith("_"):
            continue
        meant = MISSPELLED_HOOKS.get(name)
        if meant is None:
            close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.85)
            meant = close[0] if close else None
        if meant is None:
            continue
        reported.add(name)
        defined = "" if hasattr(cls, meant) and callable(getattr(cls, meant)) else (
            f" {cls.__name__} has no {meant}(), so nothing is broadcast for it."
        )
        messages.append(
            checks.Warning(
                f"{klass.__name__}.{name}() looks like a misspelled {meant}() hook; turbo_async "
                f"only calls on_save() and on_delete().{defined}",
                hint=f"Rename it to {meant}: {HOOK_SIGNATURES[meant]}.",
                obj=cls,
                id="turbo_async.W005",
            )
        )
    return messages


def _check_hook_signatures(cls: type[ModelStream[Any]]) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    model = cls._meta.get("model")
    stream = cls.__new__(cls)  # only to get bound hooks; __init__ needs a pk
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "on_save": ((object(),), {"created": True, "sender": model, "using": DEFAULT_DB_ALIAS}),
        "on_delete": ((object(),), {"sender": model, "using": DEFAULT_DB_ALIAS}),
    }
    for hook, (args, kwargs) in calls.items():
        method = getattr(stream, hook, None)
        if not callable(method):
            continue
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            continue
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            messages.append(
                checks.Error(
                    f"{cls.__name__}.{hook}{signature} cannot be called the way the worker calls "
                    f"it, {HOOK_CALLS[hook]}: {exc}.",
                    hint=f"Use the signature {HOOK_SIGNATURES[hook]}.",
                    obj=cls,
                    id="turbo_async.E003",
                )
            )
    return messages


def _unregistered(cls: type[ModelStream[Any]]) -> checks.CheckMessage:
    model = cls._meta.model
    label = model._meta.label_lower
    other = stream_registry.model_streams.get(label)
    if other is not None:
        problem = (
            f"{_dotted(cls)} is a second ModelStream for {model._meta.label}; "
            f"{_dotted(other)} is the registered one, so the hooks of {cls.__name__} never run."
        )
        hint = "A model can have only one ModelStream: merge them."
    else:
        problem = (
            f"{_dotted(cls)} is a ModelStream that is not registered, so its hooks never run "
            f"and {model._meta.label} has no .stream."
        )
        hint = (
            "Define it in the streams.py module of an installed app (found automatically), or "
            "decorate it with @turbo_async.register in a module imported at start-up."
        )
    return checks.Warning(problem, hint=hint, obj=cls, id="turbo_async.W006")
