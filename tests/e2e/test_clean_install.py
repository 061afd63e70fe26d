"""The README, followed as a new user would: a fresh virtualenv, the README's one install command,
its five steps on a fresh ``django-admin startproject`` (Redis started as the README starts it, the
web server and the worker in the development loop), a room that reaches the open list and a
message that reaches the open room, then a template edited under the running worker whose new
markup reaches the page with no manual restart.

Nothing comes from the development virtualenv: the wheel of this checkout is built, installed into
a new virtualenv with exactly the README's ``pip install`` line (the wheel's path in place of the
package name, no dev extras), and every command the README shows runs with that virtualenv's own
``pip``, ``django-admin``, ``python``, ``uvicorn`` and ``celery``, against a real Redis. Every file
the project gets is a code block of README.md. A dependency the install line fails to bring (the
Redis transport of kombu, uvicorn's WebSocket library...) fails this test.

Timeouts, in seconds, can be raised on a slow machine: ``TURBO_TEST_INSTALL_TIMEOUT`` (building the
wheel, and the ``pip install``, which fetches from the package index or pip's cache) and
``TURBO_TEST_STEP_TIMEOUT`` (every other command, server start-up and the page update).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OpenPage
from tests.services import ROOT, Process, free_port, redis_server_binary, wait_for_port
from tests.wheel import built_distributions

INSTALL_TIMEOUT = float(os.environ.get("TURBO_TEST_INSTALL_TIMEOUT", "180"))
STEP_TIMEOUT = float(os.environ.get("TURBO_TEST_STEP_TIMEOUT", "30"))

pytestmark = [pytest.mark.browser]

README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.rst"
# The README's default Redis URL; the test's processes get their own through REDIS_URL.
README_REDIS = "redis://127.0.0.1:6379/0"
# How the README names the package in its install line: `turbo-async` and its extras.
PACKAGE = re.compile(r"turbo-async(\[[\w,-]+\])?")


def readme_steps() -> str:
    """The README from "## Install" to the end of the five steps."""
    text = README.read_text()
    steps = text.index("\n## Five steps\n")
    return text[text.index("\n## Install\n") : text.index("\n## ", steps + 1)]


def readme_files() -> dict[str, str]:
    """The Python and template code blocks of the steps, keyed by the file named on their first
    line (``# file: chat/views.py``, ``# append: proj/settings.py`` or
    ``{# file: chat/templates/chat/room.html #}``)."""
    files = {}
    for body in re.findall(r"```(?:python|django)\n(.*?)```", readme_steps(), re.S):
        match = re.match(r"(?:# |\{# )(?:file|append): ([\w/.]+\.(?:py|html))", body)
        assert match, f"a README code block does not name its file on its first line:\n{body}"
        files[match.group(1)] = body
    return files


def commands_of(bash_blocks: list[str]) -> list[list[str]]:
    return [
        words for block in bash_blocks for line in block.splitlines()
        if (words := shlex.split(line, comments=True))
    ]


def readme_commands() -> list[list[str]]:
    """The shell commands of the steps, in order, without their comments."""
    return commands_of(re.findall(r"```bash\n(.*?)```", readme_steps(), re.S))


def quickstart_commands() -> list[list[str]]:
    blocks = re.findall(r"\.\. code-block:: bash\n\n((?:   .*\n|\n)+)", QUICKSTART.read_text())
    return commands_of([re.sub(r"(?m)^   ", "", block) for block in blocks])


def test_readme_shows_every_file_of_the_project() -> None:
    assert set(readme_files()) == {
        "proj/settings.py", "proj/celery.py", "proj/__init__.py", "proj/asgi.py", "proj/urls.py",
        "chat/models.py", "chat/streams.py", "chat/views.py",
        "chat/templates/chat/rooms.html", "chat/templates/chat/room_item.html",
        "chat/templates/chat/room.html", "chat/templates/chat/message.html",
    }


ROOM_LINE = "from chat.models import Room; Room.objects.create(name='Lobby')"
MESSAGE_LINE = "from chat.models import Message; Message.objects.create(room_id=1, text='Hello')"


def test_readme_starts_redis_installs_migrates_runs_both_servers_and_creates_rows() -> None:
    assert readme_commands() == [
        ["pip", "install", "turbo-async[uvicorn]"],
        ["django-admin", "startproject", "proj", "."],
        ["python", "manage.py", "startapp", "chat"],
        ["redis-server", "--daemonize", "yes"],
        ["python", "manage.py", "makemigrations", "chat"],
        ["python", "manage.py", "migrate"],
        [
            "uvicorn", "proj.asgi:application", "--reload", "--reload-include", "*.html",
            "--ws-max-size", "20000", "--ws-per-message-deflate", "false",
        ],
        ["python", "manage.py", "turbo_worker", "--reload"],
        ["python", "manage.py", "shell", "-c", ROOM_LINE],
        ["python", "manage.py", "shell", "-c", MESSAGE_LINE],
    ]


def test_readme_writes_the_redis_url_once() -> None:
    settings = readme_files()["proj/settings.py"]
    assert settings.count(README_REDIS) == 1
    assert 'REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")' in settings
    assert '"address": REDIS_URL' in settings and "CELERY_BROKER_URL = REDIS_URL" in settings


def test_readme_says_why_plain_uvicorn_is_not_enough_and_names_daphne() -> None:
    text = " ".join(readme_steps().split())
    assert "`uvicorn[standard]`" in text
    assert "Plain `pip install uvicorn` has no WebSocket library" in text
    assert "`daphne proj.asgi:application`" in text


def test_quickstart_runs_the_same_commands_as_the_readme() -> None:
    assert quickstart_commands() == readme_commands()


class CleanVirtualenv:
    """A virtualenv made by ``python -m venv``; commands run with its executables only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=STEP_TIMEOUT)
        # What a shell with the virtualenv activated has. Not this process's PYTHONPATH (the
        # checkout) nor its Django settings; pip's own configuration (PIP_*) and HOME (pip's
        # cache) are kept.
        self.env = {
            name: value for name, value in os.environ.items()
            if name.startswith("PIP_") or name in ("HOME", "LANG", "LC_ALL", "TMPDIR")
        }
        self.env.update(PATH=f"{path / 'bin'}:/usr/bin:/bin", VIRTUAL_ENV=str(path), PYTHONUNBUFFERED="1")

    def executable(self, name: str) -> str:
        found = self.path / "bin" / name
        assert found.exists(), (
            f"`{name}` is not in the clean virtualenv: the README's install command must install it."
        )
        return str(found)

    def run(self, command: list[str], cwd: Path, timeout: float = STEP_TIMEOUT) -> str:
        args = [self.executable(command[0]), *command[1:]]
        try:
            done = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f"`{shlex.join(command)}` took over {timeout} s (TURBO_TEST_*_TIMEOUT raise the limits):\n"
                f"{error.stdout!r}\n{error.stderr!r}"
            ) from None
        assert done.returncode == 0, f"`{shlex.join(command)}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def process(self, name: str, command: list[str], cwd: Path) -> Process:
        return Process(name, [self.executable(command[0]), *command[1:]], cwd / "logs", self.env)


def build_wheel() -> Path:
    """The wheel of this checkout, built as a release is (sdist, then the wheel from it); once per
    run, shared with tests/test_packaging.py (tests/wheel.py)."""
    [wheel] = built_distributions().glob("turbo_async-*-py3-none-any.whl")
    return wheel


def write_files(project: Path) -> None:
    for name, code in readme_files().items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if code.startswith("# append: "):
            path.write_text(path.read_text() + "\n" + code)
        else:
            path.write_text(code)


def wait_log(process: Process, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while process.log().count(text) < count:
        assert process.process is not None and process.process.poll() is None, (
            f"{process.name} exited:\n{process.log()}"
        )
        assert time.monotonic() < deadline, (
            f"{count} x {text!r} not in {process.name}'s log after {STEP_TIMEOUT} s:\n{process.log()}"
        )
        time.sleep(0.1)


@pytest.mark.timeout(2 * INSTALL_TIMEOUT + 12 * STEP_TIMEOUT)
def test_readme_on_a_clean_virtualenv_updates_the_page(tmp_path: Path, open_page: OpenPage) -> None:
    wheel = build_wheel()
    venv = CleanVirtualenv(tmp_path / "venv")
    project = tmp_path / "project"
    project.mkdir()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_port = free_port()
    port = free_port()
    processes: dict[str, Process] = {}
    pages: dict[str, Any] = {}
    try:
        for command in readme_commands():
            name = command[0]
            if command[:2] == ["pip", "install"]:
                # The README's line, exactly, with the wheel's path in place of the package name.
                arguments = [PACKAGE.sub(lambda m: f"{wheel}{m.group(1) or ''}", word) for word in command]
                assert arguments != command, f"no `turbo-async` to install in {command}"
                venv.run(arguments, project, timeout=INSTALL_TIMEOUT)
                location = venv.run(["python", "-c", "import turbo_async; print(turbo_async.__file__)"], project)
                assert location.startswith(str(venv.path)), location
            elif name == "redis-server":
                # The README's line, on a port, directory and pid file of the test's own.
                subprocess.run(
                    [
                        redis_server_binary(), *command[1:], "--port", str(redis_port), "--bind", "127.0.0.1",
                        "--dir", str(redis_dir), "--pidfile", str(redis_dir / "redis.pid"), "--save", "",
                    ],
                    check=True, timeout=STEP_TIMEOUT,
                )
                wait_for_port(redis_port, timeout=STEP_TIMEOUT)
                venv.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"  # the settings' one URL
            elif name == "uvicorn":
                web = venv.process("web", [*command, "--port", str(port)], project)
                processes["web"] = web
                web.start_in(project)
                try:
                    wait_for_port(port, timeout=STEP_TIMEOUT, process=web.process)
                except (RuntimeError, TimeoutError) as error:
                    raise AssertionError(f"{error}:\n{web.log()}") from None
            elif command[:3] == ["python", "manage.py", "turbo_worker"]:
                worker = venv.process("worker", [*command, "--", "--concurrency", "1"], project)
                processes["worker"] = worker
                worker.start_in(project)
                wait_log(worker, " ready.")
            elif command[:4] == ["python", "manage.py", "shell", "-c"] and command[4] == ROOM_LINE:
                pages["rooms"] = open_page(f"http://127.0.0.1:{port}/")  # waits for the subscription
                venv.run(command, project)
                expect(pages["rooms"].locator("#rooms")).to_contain_text("Lobby", timeout=STEP_TIMEOUT * 1000)
            elif command[:4] == ["python", "manage.py", "shell", "-c"] and command[4] == MESSAGE_LINE:
                pages["room"] = open_page(f"http://127.0.0.1:{port}/rooms/1/")
                venv.run(command, project)
                expect(pages["room"].locator("#messages")).to_contain_text("Hello", timeout=STEP_TIMEOUT * 1000)
            elif name == "django-admin" or command[:2] == ["python", "manage.py"]:
                venv.run(command, project)
                if command[-2:] == ["startapp", "chat"]:  # the project and app exist: the steps' files
                    write_files(project)
            else:
                raise AssertionError(f"the README shows a command this test cannot follow: {shlex.join(command)}")
        assert list(processes) == ["web", "worker"] and list(pages) == ["rooms", "room"]

        # The development loop: edit the message template, and the next message has its markup.
        template = project / "chat" / "templates" / "chat" / "message.html"
        template.write_text(template.read_text().replace("<p id=", '<p class="edited" id='))
        wait_log(processes["worker"], "message.html changed; restarting the worker")
        wait_log(processes["worker"], " ready.", count=2)
        wait_log(processes["web"], "Application startup complete.", count=2)  # uvicorn --reload too
        pages["room"].wait_for_function("window.__turbo.subscribed >= 2")  # its socket is back
        venv.run(["python", "manage.py", "shell", "-c", MESSAGE_LINE.replace("'Hello'", "'Hello again'")], project)
        expect(pages["room"].locator("#messages p.edited")).to_have_text("Hello again", timeout=STEP_TIMEOUT * 1000)
    finally:
        for process in processes.values():
            process.stop()
            print(f"--- {process.name} ({shlex.join(process.args)}):\n{process.log()}")  # shown if it fails
        pid_file = redis_dir / "redis.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
