"""Layer 10: ``python manage.py turbo_streams``, the registered streams, and ``--check`` of the
services.

Without options it lists every stream with its model, hooks and the Celery queue its broadcasts
go to. ``--check`` connects to the Celery broker, asks the workers which queues they consume,
counts the tasks waiting in the broadcast queue and makes a round trip through the channel layer
(the way a worker sends); it prints a verdict per service and exits non-zero if broadcasts would
not reach a browser. ``--status`` prints a live snapshot of a running deployment without
Prometheus: each web process as it last reported itself in Redis (sockets, subscriptions, lag over
the last minute, its outbox; ``TURBO_ASYNC["METRICS"]`` on), the workers that answer a ping, and
the tasks waiting in the broadcast queue.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, InMemoryChannelLayer
from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf, delivery, metrics
from ...broker import broker_is_redis, broker_uri, describe_broker, fallback_app, scheme
from ...checks import TAG
from ...registry import stream_registry
from ...streams import ModelStream

HOOKS = tuple(ModelStream.hooks.values())

CHECK_MESSAGE_TYPE = "turbo.check"
STATUS_COLUMNS = ("Process", "Sockets", "Subscriptions", "Frames/min", "Lag p50", "Lag p99", "Outbox", "Oldest")


class Command(BaseCommand):
    # --check runs turbo_async's checks itself: an error there must not hide the verdict.
    requires_system_checks: list[str] = []
    help = (
        "List the registered Turbo streams (name, model, hooks, queue). With --check, connect to "
        "the Celery broker and the channel layer and report whether broadcasts can go out."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Connect to the broker and make a round trip through the channel layer.",
        )
        parser.add_argument(
            "--status",
            action="store_true",
            help=(
                "A live snapshot: the web processes reporting to Redis (sockets, subscriptions, lag "
                "p50/p99 over the last minute, outbox), the workers that answer a ping, the queue."
            ),
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=5.0,
            help="Seconds to wait for each service with --check (default: 5).",
        )
        parser.add_argument(
            "--worker-timeout",
            type=float,
            default=1.0,
            help=(
                "Seconds to wait for the workers' replies with --check (default: 1); every "
                "reply that comes in by then counts."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["status"]:
            self.status(options["timeout"], options["worker_timeout"])
            return
        self.list_streams()
        if options["check"]:
            self.check_services(options["timeout"], options["worker_timeout"])

    # -- listing ---------------------------------------------------------------------------

    def list_streams(self) -> None:
        queue = _queue()
        rows = [("Stream", "Model", "Hooks", "Queue")]
        for name in stream_registry.get_stream_names():
            stream_class = stream_registry.get_stream(name)
            if issubclass(stream_class, ModelStream):
                model = stream_class._meta.model._meta.label
                hooks = ", ".join(h for h in HOOKS if callable(getattr(stream_class, h, None)))
            else:
                model = "-"
                hooks = ""
            rows.append((name, model, hooks or "-", queue))
        if len(rows) == 1:
            self.stdout.write(
                "No streams are registered. Define them in a streams.py module of an installed "
                "app, or decorate them with @turbo_async.register."
            )
            return
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(line) if index == 0 else line)

    # -- --check ---------------------------------------------------------------------------

    def check_services(self, timeout: float, worker_timeout: float) -> None:
        self.stdout.write("")
        failures: list[str] = []
        advice: list[str] = []
        for message in checks.run_checks(tags=[TAG]):
            if message.is_silenced():
                continue
            level = self.style.ERROR("ERROR") if message.is_serious() else self.style.WARNING("WARNING")
            self.stdout.write(f"Check {message.id}: {level} {message.msg}")
            if message.hint:
                self.stdout.write(f"    HINT: {message.hint}")
            if message.is_serious():
                failures.append(f"the check {message.id} failed")
        broker_ok = self.check_broker(timeout, failures, advice)
        if broker_ok:
            self.check_workers(worker_timeout, timeout, failures, advice)
        else:
            self.stdout.write("Workers: not checked (the broker is unreachable)")
        started = time.monotonic()
        try:
            where, note = _check_layer(timeout)
        except Exception as exc:
            self.stdout.write(f"Channel layer: {self.style.ERROR('FAILED')} ({_reason(exc)})")
            failures.append("the channel layer is unreachable")
            advice.append("Check CHANNEL_LAYERS, and that its Redis is running and reachable from here.")
        else:
            elapsed = (time.monotonic() - started) * 1000
            self.stdout.write(f"Channel layer: {self.style.SUCCESS('OK')} {where} ({elapsed:.0f} ms){note}")
        if failures:
            problems = ", ".join(failures[:-1]) + (" and " if len(failures) > 1 else "") + failures[-1]
            raise CommandError(f"Broadcasts cannot go out: {problems}. " + " ".join(advice))
        self.stdout.write(
            self.style.SUCCESS("Broker, workers and channel layer are ready for broadcasts.")
        )

    def check_broker(self, timeout: float, failures: list[str], advice: list[str]) -> bool:
        app = _celery_app()
        url = broker_uri(app)
        started = time.monotonic()
        try:
            _connect(app, timeout)
        except ImportError as exc:
            # kombu imports a transport's libraries only when it connects (issue: a clean
            # install without kombu's redis extra fails here, and in every worker).
            self.stdout.write(f"Broker: {self.style.ERROR('FAILED')} {url} ({_reason(exc)})")
            failures.append("the broker's transport cannot be loaded")
            extra = "redis" if broker_is_redis(app) else scheme(url)
            advice.append(
                f"The transport of {url} needs a package that is not installed ({exc}): "
                f"install the broker's dependencies, e.g. pip install \"celery[{extra}]\"."
            )
            return False
        except Exception as exc:
            self.stdout.write(f"Broker: {self.style.ERROR('FAILED')} {url} ({_reason(exc)})")
            failures.append("the broker is unreachable")
            advice.append(_broker_advice(app))
            return False
        elapsed = (time.monotonic() - started) * 1000
        note = ""
        if app.conf.task_always_eager:
            note = " - but task_always_eager is on, so tasks run in the web process (turbo_async.W004)"
        elif fallback_app(app):
            note = " - Celery's default app: no Celery app is loaded in this process (turbo_async.W003)"
        self.stdout.write(f"Broker: {self.style.SUCCESS('OK')} {url} ({elapsed:.0f} ms){note}")
        return True

    def check_workers(
        self, worker_timeout: float, timeout: float, failures: list[str], advice: list[str]
    ) -> None:
        app = _celery_app()
        queue = _queue()
        if app.conf.task_always_eager:
            self.stdout.write(
                "Workers: not needed - task_always_eager runs every task in the web process"
            )
            return
        try:
            waiting = _waiting(app, queue, timeout)
            replies = _active_queues(app, worker_timeout)
        except Exception as exc:
            self.stdout.write(f"Workers: {self.style.ERROR('FAILED')} ({_reason(exc)})")
            failures.append("the workers could not be asked")
            advice.append(_broker_advice(app))
            return
        consumers = sorted(name for name, queues in replies.items() if queue in queues)
        if waiting is None:
            backlog = "the broker has no such queue yet (no worker declared it)"
        else:
            backlog = f"{_count(waiting, 'task')} waiting in it"
        if consumers:
            self.stdout.write(
                f"Workers: {self.style.SUCCESS('OK')} {_count(len(consumers), 'worker')} on the "
                f"queue {queue!r} ({', '.join(consumers)}); {backlog}"
            )
            return
        if replies:
            others = ", ".join(
                f"{name} ({', '.join(sorted(queues)) or 'no queue'})" for name, queues in sorted(replies.items())
            )
            seen = f"the workers that replied consume other queues: {others}"
        else:
            seen = f"no worker replied within {worker_timeout:g} s"
        self.stdout.write(
            f"Workers: {self.style.ERROR('FAILED')} no worker consumes the queue {queue!r} "
            f"({seen}); {backlog}"
        )
        failures.append(f"no worker consumes the queue {queue!r}")
        project = app.main if app.main and not fallback_app(app) else "proj"
        advice.append(
            f"Start one: celery -A {project} worker -Q {queue}. (A worker that runs without "
            "remote control, or a --pool solo worker busy for longer than --worker-timeout, "
            "does not reply either.)"
        )


    # -- --status --------------------------------------------------------------------------

    def status(self, timeout: float, worker_timeout: float) -> None:
        interval = conf.get().STATUS_INTERVAL
        layer = delivery.channel_layer()
        try:
            records: list[dict[str, Any]] = delivery.run(metrics.read_status(layer), timeout=timeout)
        except Exception as exc:
            raise CommandError(
                f"Could not read the web processes' status from the channel layer's Redis ({_reason(exc)})."
            ) from exc
        if records:
            self.stdout.write(f"Web processes: {len(records)} (each reports every {interval:g} s)")
            rows: list[tuple[str, ...]] = [STATUS_COLUMNS]
            for record in records:
                rows.append((
                    f"{record['host']}:{record['pid']}", str(record["sockets"]), str(record["subscriptions"]),
                    str(record["frames_last_minute"]), _ms(record["lag_p50_ms"]), _ms(record["lag_p99_ms"]),
                    str(record["outbox_waiting"]), f"{record['outbox_oldest_age_s']:g} s",
                ))
            rows.append((
                "total", str(sum(r["sockets"] for r in records)), str(sum(r["subscriptions"] for r in records)),
                str(sum(r["frames_last_minute"] for r in records)), "", "",
                str(sum(r["outbox_waiting"] for r in records)), "",
            ))
            self.write_table(rows)
        else:
            self.stdout.write(
                "Web processes: none reported to Redis. None runs, or none runs with "
                "TURBO_ASYNC['METRICS'] on (a process reports from its first request or WebSocket, "
                f"and its record expires {max(1, int(interval * 3))} s after its last report)."
            )
        app = _celery_app()
        try:
            replies = app.control.inspect(timeout=worker_timeout).ping() or {}
            waiting = _waiting(app, _queue(), timeout)
        except Exception as exc:
            self.stdout.write(f"Workers: {self.style.ERROR('FAILED')} the broker is unreachable ({_reason(exc)})")
            replies, waiting = {}, None
        else:
            queued = "" if waiting is None else f"; {_count(waiting, 'task')} waiting in the queue {_queue()!r}"
            if replies:
                self.stdout.write(
                    f"Workers: {_count(len(replies), 'worker')} answered a ping ({', '.join(sorted(replies))}){queued}"
                )
            else:
                self.stdout.write(f"Workers: none answered a ping within {worker_timeout:g} s{queued}")
        if not records and not replies:
            raise CommandError("Nothing is running: no web process reported and no worker answered.")

    def write_table(self, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(line) if index == 0 else line)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _broker_advice(app: Any) -> str:
    """Which broker this process publishes to and why that one (turbo_async.broker)."""
    warning = " (turbo_async.W003)" if fallback_app(app) else ""
    return (
        f"This process publishes to {describe_broker(app)}{warning}: check that the broker runs and is "
        "reachable from here."
    )


_celery_app = conf.celery_app


def _queue() -> str:
    return conf.get().QUEUE or str(_celery_app().conf.task_default_queue)


def _connect(app: Any, timeout: float) -> None:
    with app.connection_for_write() as connection:
        connection.connect_timeout = timeout
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2, timeout=timeout
        )


def _waiting(app: Any, queue: str, timeout: float) -> int | None:
    """Tasks waiting in ``queue`` (not yet taken by a worker); None if the broker has no such queue.

    A passive declare creates nothing and answers the message count on every transport: on Redis
    it is the length of the queue's lists (one per priority step); on RabbitMQ the queue's ready
    messages.
    """
    with app.connection_for_write() as connection:
        connection.connect_timeout = timeout
        channel = connection.channel()
        try:
            declared = channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:
            # Redis deletes an empty list, so "no such queue" there means an empty queue.
            return 0 if connection.transport.driver_type == "redis" else None
        finally:
            try:
                channel.close()
            except Exception:  # pragma: no cover - RabbitMQ closed it already after a 404
                pass
        return int(declared.message_count)


def _active_queues(app: Any, worker_timeout: float) -> dict[str, set[str]]:
    """Each worker that replies within ``worker_timeout``, with the names of the queues it consumes."""
    replies = app.control.inspect(timeout=worker_timeout).active_queues() or {}
    return {
        str(name): {str(q.get("name")) for q in (queues or []) if isinstance(q, dict)}
        for name, queues in replies.items()
    }


def _check_layer(timeout: float) -> tuple[str, str]:
    layer = delivery.channel_layer()
    where = f"{type(layer).__module__}.{type(layer).__qualname__}"
    if isinstance(layer, InMemoryChannelLayer):
        async_to_sync(_round_trip)(layer, timeout)
        return where, " - in-memory: it reaches this process only"
    delivery.run(_round_trip(layer, timeout), timeout=timeout + 1)
    return where, ""


async def _round_trip(layer: BaseChannelLayer, timeout: float) -> None:
    """group_add, group_send and receive one message, as a worker and a consumer would."""
    token = secrets.token_hex(8)
    group = f"turbo_async.check.{token}"
    channel = await layer.new_channel()
    await asyncio.wait_for(layer.group_add(group, channel), timeout)
    try:
        await asyncio.wait_for(
            layer.group_send(group, {"type": CHECK_MESSAGE_TYPE, "token": token}), timeout
        )
        message = await asyncio.wait_for(layer.receive(channel), timeout)
    finally:
        await asyncio.wait_for(layer.group_discard(group, channel), timeout)
    if message.get("token") != token:
        raise RuntimeError(f"the layer returned another message: {message!r}")
