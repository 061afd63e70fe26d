"""``manage.py turbo_worker``: the project's Celery worker, and with ``--reload`` the development
loop: an edited template reaches the stream without a manual restart.

A project of its own in a temporary directory (Celery's Django layout, tests/test_command.py's
``make_project``) with a ``notes`` app, a real Redis as broker and channel layer (databases of their
own: the session's worker must not take these tasks), the command in a real process, and the
frames read from the channel layer as a web process would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOG_DIR
from tests.services import Process, RedisServer
from tests.test_command import make_project, run_in
from turbo_async import names
from turbo_async.management.commands.turbo_worker import celery_command

NOTES_APP = {
    "__init__.py": "",
    "models.py": """
        from django.db import models

        class Note(models.Model):
            text = models.TextField()
        """,
    "streams.py": """
        import turbo_async as turbo

        from .models import Note

        class NoteListStream(turbo.Stream):
            pass

        class NoteStream(turbo.ModelStream):
            class Meta:
                model = Note

            def on_save(self, note, created, *args, **kwargs):
                NoteListStream().append("notes/note.html", {"note": note}, id="notes")
        """,
    "templates/notes/note.html": "<li>v1 {{ note.text }}</li>\n",
}


def test_log_level_is_info_unless_given() -> None:
    assert celery_command("proj", ["-Q", "q"])[3:] == ["-A", "proj", "worker", "-l", "INFO", "-Q", "q"]
    assert celery_command("proj", ["--loglevel=DEBUG"])[3:] == ["-A", "proj", "worker", "--loglevel=DEBUG"]


def notes_project(tmp_path: Path, redis: RedisServer) -> tuple[dict[str, str], str]:
    """The project, migrated; returns its environment and its channel layer's URL."""
    base = redis.url.rsplit("/", 1)[0]
    layer_url = f"{base}/7"
    env = make_project(tmp_path, broker_url=f"{base}/6", redis_url=layer_url)
    for name, text in NOTES_APP.items():
        path = tmp_path / "proj" / "notes" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    with (tmp_path / "proj" / "settings.py").open("a") as settings_file:
        settings_file.write(
            'INSTALLED_APPS += ["proj.notes"]\n'
            'TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]\n'
        )
    migrated = run_in(tmp_path, env, "migrate", "--run-syncdb", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    return env, layer_url


class Frames:
    """What the project's workers send to NoteListStream, read from the channel layer."""

    def __init__(self, layer_url: str) -> None:
        from channels_redis.core import RedisChannelLayer

        self.loop = asyncio.new_event_loop()
        self.layer = RedisChannelLayer(hosts=[{"address": layer_url, "socket_timeout": None}])
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        group = names.group_name("notes:NoteListStream", [], {})
        self.loop.run_until_complete(self.layer.group_add(group, self.channel))

    def next(self, timeout: float = 20) -> str:
        message: dict[str, Any] = self.loop.run_until_complete(
            asyncio.wait_for(self.layer.receive(self.channel), timeout)
        )
        return json.dumps(message)

    def close(self) -> None:
        self.loop.run_until_complete(self.layer.close_pools())
        self.loop.close()


def wait_for_log(process: Process, text: str, count: int = 1, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while process.log().count(text) < count:
        if process.process is not None and process.process.poll() is not None:
            raise AssertionError(f"turbo_worker exited:\n{process.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} x {text!r} not in the log after {timeout}s:\n{process.log()}")
        time.sleep(0.1)


@pytest.mark.integration
def test_reload_restarts_the_worker_when_a_template_changes_and_the_new_render_is_sent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env, layer_url = notes_project(tmp_path, redis_server)
    worker = Process(
        "turbo_worker",
        [
            sys.executable, "-m", "django", "turbo_worker", "--reload", "--",
            "--pool", "solo", "--without-mingle", "--without-gossip",
        ],
        LOG_DIR, env,
    )
    frames = Frames(layer_url)
    worker.start_in(tmp_path)
    try:
        wait_for_log(worker, " ready.")
        save = "from proj.notes.models import Note; from turbo_async import outbox; Note.objects.create(text={!r}); outbox.flush(5)"
        assert run_in(tmp_path, env, "shell", "-c", save.format("first")).returncode == 0
        assert "<li>v1 first</li>" in frames.next()

        (tmp_path / "proj" / "notes" / "templates" / "notes" / "note.html").write_text("<li>v2 {{ note.text }}</li>\n")
        wait_for_log(worker, "note.html changed; restarting the worker")
        wait_for_log(worker, " ready.", count=2)

        assert run_in(tmp_path, env, "shell", "-c", save.format("second")).returncode == 0
        assert "<li>v2 second</li>" in frames.next()
    finally:
        worker.stop()
        frames.close()


def test_without_a_loaded_celery_app_it_says_what_to_add(tmp_path: Path) -> None:
    env = make_project(
        tmp_path, broker_url="redis://127.0.0.1:1/0", redis_url="redis://127.0.0.1:1/0", load_celery_app=False
    )
    result = run_in(tmp_path, env, "turbo_worker")
    assert result.returncode == 1
    assert (
        "CommandError: No Celery app is loaded in this process; add 'from .celery import app as "
        "celery_app' to proj/__init__.py, or pass --app proj." in result.stderr
    )


def test_without_reload_it_is_celery_worker_with_the_projects_app(tmp_path: Path) -> None:
    """Options after -- reach ``celery -A proj worker`` (here --help, which exits at once)."""
    env = make_project(tmp_path, broker_url="redis://127.0.0.1:1/0", redis_url="redis://127.0.0.1:1/0")
    result = run_in(tmp_path, env, "turbo_worker", "--", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m celery worker [OPTIONS]" in result.stdout, result.stdout
