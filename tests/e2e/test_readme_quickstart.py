"""The README's five steps, followed as a new user would, on a fresh ``django-admin startproject``.

Every file the README shows (settings, proj/celery.py, proj/__init__.py, proj/asgi.py,
chat/streams.py, the room template) is taken from README.md itself; the test adds only what a
user already has (the chat models, a view and URL for the room page). Then it runs the real
servers the README names — uvicorn and ``celery -A proj worker`` — against a real Redis, loads
the room page in Chromium, saves a Message from ``manage.py shell``, and expects it to appear
on the page without a reload.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OpenPage
from tests.services import ROOT, Process, RedisServer, free_port, wait_for_port

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MODELS = '''
from django.db import models


class Room(models.Model):
    name = models.CharField(max_length=100)


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    text = models.TextField()
'''

VIEWS = '''
from django.shortcuts import get_object_or_404, render

from .models import Room


def room(request, pk):
    return render(request, "chat/room.html", {"room": get_object_or_404(Room, pk=pk)})
'''

URLS = '''
from django.urls import path

from chat.views import room

urlpatterns = [path("rooms/<int:pk>/", room)]
'''


def readme_blocks() -> dict[str, str]:
    """README code blocks keyed by the file named on their first line."""
    text = (ROOT / "README.md").read_text()
    blocks = {}
    for body in re.findall(r"```(?:python|django)\n(.*?)```", text, re.S):
        first = body.splitlines()[0]
        match = re.match(r"(?:# |\{# )([\w/.]+\.(?:py|html))", first)
        if match:
            blocks[match.group(1)] = body
    return blocks


def test_readme_blocks_are_all_there() -> None:
    assert set(readme_blocks()) == {
        "proj/settings.py", "proj/celery.py", "proj/__init__.py", "proj/asgi.py",
        "chat/streams.py", "chat/templates/chat/room.html",
    }


def wait_until(condition: Callable[[], bool], process: Process, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.1)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_five_steps_on_a_fresh_project(tmp_path: Path, open_page: OpenPage) -> None:
    blocks = readme_blocks()
    redis = RedisServer(free_port(), tmp_path / "redis")
    redis.start()
    url = redis.url
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "HOME": str(tmp_path),
    }
    processes: list[Process] = []
    try:
        run([sys.executable, "-m", "django", "startproject", "proj", str(tmp_path)], tmp_path, env)
        run([sys.executable, "-m", "django", "startapp", "chat"], tmp_path, env)
        settings = tmp_path / "proj/settings.py"
        settings.write_text(settings.read_text() + "\n" + blocks["proj/settings.py"].replace("redis://127.0.0.1:6379/0", url))
        for name in ("proj/celery.py", "proj/__init__.py", "proj/asgi.py", "chat/streams.py", "chat/templates/chat/room.html"):
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(blocks[name])
        (tmp_path / "chat/models.py").write_text(MODELS)
        (tmp_path / "chat/views.py").write_text(VIEWS)
        (tmp_path / "proj/urls.py").write_text(URLS)
        (tmp_path / "chat/templates/chat/message.html").write_text(
            '<div id="message-{{ message.id }}">{{ message.text }}</div>'
        )
        run([sys.executable, "-m", "django", "makemigrations", "chat"], tmp_path, env)
        run([sys.executable, "-m", "django", "migrate"], tmp_path, env)
        pk = run(
            [sys.executable, "-m", "django", "shell", "-c",
             "from chat.models import Room; print(Room.objects.create(name='lobby').pk)"],
            tmp_path, env,
        ).strip().splitlines()[-1]  # shell may print an import note first

        port = free_port()
        # The README's two commands (with a free port and one worker process).
        web = Process("quickstart-web", [sys.executable, "-m", "uvicorn", "proj.asgi:application", "--port", str(port)], tmp_path, env)
        worker = Process("quickstart-worker", [sys.executable, "-m", "celery", "-A", "proj", "worker", "-l", "INFO", "--concurrency", "1"], tmp_path, env)
        processes += [web, worker]
        web.start_in(tmp_path)
        worker.start_in(tmp_path)
        wait_for_port(port, process=web.process)
        wait_until(lambda: " ready." in worker.log(), worker)

        static = urlopen(f"http://127.0.0.1:{port}/static/turbo_async/js/turbo-async.js", timeout=10)
        assert static.status == 200
        page = open_page(f"http://127.0.0.1:{port}/rooms/{pk}/")  # waits for the subscription
        run(
            [sys.executable, "-m", "django", "shell", "-c",
             f"from chat.models import Message; Message.objects.create(room_id={pk}, text='hello from the shell')"],
            tmp_path, env,
        )
        expect(page.locator("#messages")).to_contain_text("hello from the shell", timeout=20_000)
    finally:
        for process in processes:
            process.stop()
        redis.stop()
