"""``python manage.py turbo_streams``: the registered streams, and ``--check`` of the services.

Without options it lists every stream with its model, hooks and the Celery queue its broadcasts
go to. ``--check`` connects to the Celery broker and makes a round trip through the channel
layer (the way a worker sends), prints a verdict per service and exits non-zero if one fails.
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
from kombu.utils.url import maybe_sanitize_url

from ... import conf, delivery
from ...checks import TAG
from ...registry import stream_registry
from ...streams import ModelStream

HOOKS = tuple(ModelStream.hooks.values())

CHECK_MESSAGE_TYPE = "turbo.check"


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
            "--timeout",
            type=float,
            default=5.0,
            help="Seconds to wait for each service with --check (default: 5).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.list_streams()
        if options["check"]:
            self.check_services(options["timeout"])

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

    def check_services(self, timeout: float) -> None:
        self.stdout.write("")
        failures = []
        for message in checks.run_checks(tags=[TAG]):
            if message.is_silenced():
                continue
            level = self.style.ERROR("ERROR") if message.is_serious() else self.style.WARNING("WARNING")
            self.stdout.write(f"Check {message.id}: {level} {message.msg}")
            if message.hint:
                self.stdout.write(f"    HINT: {message.hint}")
            if message.is_serious():
                failures.append(f"the check {message.id}")
        for name, probe in (("Broker", _check_broker), ("Channel layer", _check_layer)):
            started = time.monotonic()
            try:
                where, note = probe(timeout)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.stdout.write(f"{name}: {self.style.ERROR('FAILED')} ({reason})")
                failures.append(f"the {name.lower()}")
                continue
            elapsed = (time.monotonic() - started) * 1000
            self.stdout.write(
                f"{name}: {self.style.SUCCESS('OK')} {where} ({elapsed:.0f} ms){note}"
            )
        if failures:
            raise CommandError(
                f"Broadcasts cannot go out: {' and '.join(failures)} failed. Check CELERY_BROKER_URL "
                "and CHANNEL_LAYERS, and that the broker and Redis are running."
            )
        self.stdout.write(self.style.SUCCESS("Broker and channel layer are reachable."))


_celery_app = conf.celery_app


def _queue() -> str:
    return conf.get().QUEUE or str(_celery_app().conf.task_default_queue)


def _check_broker(timeout: float) -> tuple[str, str]:
    app = _celery_app()
    note = ""
    if app.conf.task_always_eager:
        note = " - but task_always_eager is on, so tasks run in the web process (turbo_async.W004)"
    with app.connection_for_write() as connection:
        connection.connect_timeout = timeout
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2, timeout=timeout
        )
        return maybe_sanitize_url(connection.as_uri(include_password=True)), note


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
