"""Layer 10: ``python manage.py turbo_worker [--reload] [-- celery worker options]``, the Celery
worker of the project, and with ``--reload`` the development loop.

Celery has no autoreload: a worker renders with the hooks and templates it loaded at start, so an
edited ``streams.py`` or template reaches the pages only after a restart. ``--reload`` runs the
worker under Django's autoreloader, as ``runserver`` runs the web server: the reloader watches
every Python module the project loaded (``streams.py`` included) and every template directory, and
a change stops the worker (a warm shutdown: running tasks finish) and starts a new one. Template
changes restart it too (``runserver`` only resets its template loaders, but the templates a
worker renders live in its pool's processes).

Without ``--reload`` it runs ``celery -A <app> worker`` as it is. Options after ``--`` go to
``celery worker``::

    python manage.py turbo_worker --reload -- -l INFO -Q broadcasts
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from ... import conf
from ...broker import LOAD_APP_HINT, fallback_app

STOP_TIMEOUT = 10.0
"""Seconds a worker has to finish its running tasks when a change restarts it (then SIGKILL)."""


def celery_command(app: str, options: list[str]) -> list[str]:
    """``python -m celery -A <app> worker <options>`` (``-l INFO`` unless a log level is given)."""
    level = [] if any(o in ("-l", "--loglevel") or o.startswith("--loglevel=") for o in options) else ["-l", "INFO"]
    return [sys.executable, "-m", "celery", "-A", app, "worker", *level, *options]


def project_app() -> str:
    """The name ``-A`` takes for this process's Celery app (its main module, ``proj``)."""
    app = conf.celery_app()
    if fallback_app(app):
        raise CommandError(
            f"No Celery app is loaded in this process; {LOAD_APP_HINT}, or pass --app proj."
        )
    return str(app.main)


class Command(BaseCommand):
    help = (
        "Run the project's Celery worker. With --reload, restart it when Python code or a template "
        "changes (the development loop). Options after -- go to celery worker."
    )
    requires_system_checks: list[str] = []  # the worker runs them in its own process

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reload", action="store_true",
            help="Restart the worker when a Python module or a template changes (development).",
        )
        parser.add_argument("--app", help="The Celery app, as celery -A takes it (default: the loaded app).")
        parser.add_argument("celery_options", nargs="*", help="Options for celery worker, after --.")

    def handle(self, *args: Any, **options: Any) -> None:
        command = celery_command(options["app"] or project_app(), list(options["celery_options"]))
        if not options["reload"]:
            os.execv(command[0], command)
        autoreload.file_changed.connect(restart_on_any_change, dispatch_uid="turbo_worker_restart")
        autoreload.run_with_reloader(run_worker, command, self.stderr)


def restart_on_any_change(sender: Any, file_path: Path, **kwargs: Any) -> None:
    """A template changed too: restart (Django's own receiver only resets the loaders of this
    process, and this process renders nothing)."""
    sys.stderr.write(f"turbo_worker: {file_path} changed; restarting the worker\n")
    sys.stderr.flush()
    autoreload.trigger_reload(str(file_path))


def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the reloader's process dies (Linux), so a killed
    reloader leaves no worker behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_worker(command: list[str], stderr: Any) -> None:
    """In the reloader's child: run the worker until it exits; stop it when this process exits
    (a change, or the reloader told to stop)."""
    worker = subprocess.Popen(command, preexec_fn=_die_with_parent)

    def stop() -> None:
        if worker.poll() is None:
            worker.terminate()  # warm shutdown: the running tasks finish
            try:
                worker.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    atexit.register(stop)
    code = worker.wait()
    stderr.write(f"turbo_worker: the worker exited with {code}; waiting for a file change to start it again\n")
