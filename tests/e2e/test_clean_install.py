"""The README, followed as a new user would: a fresh virtualenv, the README's one install command,
its five steps on a fresh ``django-admin startproject``, and a save that reaches a browser.

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
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OpenPage
from tests.services import ROOT, Process, RedisServer, free_port, wait_for_port
from tests.wheel import built_distributions

INSTALL_TIMEOUT = float(os.environ.get("TURBO_TEST_INSTALL_TIMEOUT", "180"))
STEP_TIMEOUT = float(os.environ.get("TURBO_TEST_STEP_TIMEOUT", "30"))

pytestmark = [pytest.mark.browser]

README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.rst"
# The README's own Redis URL, replaced by the test's Redis server.
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
    line (``# chat/views.py`` or ``{# chat/templates/chat/room.html #}``)."""
    files = {}
    for body in re.findall(r"```(?:python|django)\n(.*?)```", readme_steps(), re.S):
        match = re.match(r"(?:# |\{# )([\w/.]+\.(?:py|html))", body)
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
        "chat/templates/chat/room.html", "chat/templates/chat/message.html",
    }


def test_readme_installs_with_the_uvicorn_extra_then_migrates_and_runs_both_servers() -> None:
    assert readme_commands() == [
        ["pip", "install", "turbo-async[uvicorn]"],
        ["django-admin", "startproject", "proj", "."],
        ["python", "manage.py", "startapp", "chat"],
        ["python", "manage.py", "makemigrations", "chat"],
        ["python", "manage.py", "migrate"],
        ["uvicorn", "proj.asgi:application", "--ws-max-size", "20000", "--ws-per-message-deflate", "false"],
        ["celery", "-A", "proj", "worker", "-l", "INFO"],
    ]


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


def write_files(project: Path, redis_url: str) -> None:
    for name, code in readme_files().items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "proj/settings.py":
            assert code.startswith("# proj/settings.py (added at the end)"), code
            assert README_REDIS in code, f"the README's settings no longer use {README_REDIS}"
            path.write_text(path.read_text() + "\n" + code.replace(README_REDIS, redis_url))
        else:
            path.write_text(code)


def wait_ready(worker: Process) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while " ready." not in worker.log():
        assert worker.process is not None and worker.process.poll() is None, f"the worker exited:\n{worker.log()}"
        assert time.monotonic() < deadline, f"the worker is not ready after {STEP_TIMEOUT} s:\n{worker.log()}"
        time.sleep(0.1)


@pytest.mark.timeout(2 * INSTALL_TIMEOUT + 10 * STEP_TIMEOUT)
def test_readme_on_a_clean_virtualenv_updates_the_page(tmp_path: Path, open_page: OpenPage) -> None:
    wheel = build_wheel()
    venv = CleanVirtualenv(tmp_path / "venv")
    project = tmp_path / "project"
    project.mkdir()
    redis = RedisServer(free_port(), tmp_path / "redis")
    redis.start()
    port = free_port()
    processes: list[Process] = []
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
            elif name == "django-admin" or command[:2] == ["python", "manage.py"]:
                venv.run(command, project)
                if command[-2:] == ["startapp", "chat"]:  # the project and app exist: the steps' files
                    write_files(project, redis.url)
            elif name == "uvicorn":
                web = venv.process("web", [*command, "--port", str(port)], project)
                processes.append(web)
                web.start_in(project)
                try:
                    wait_for_port(port, timeout=STEP_TIMEOUT, process=web.process)
                except (RuntimeError, TimeoutError) as error:
                    raise AssertionError(f"{error}:\n{web.log()}") from None
            elif command[:4] == ["celery", "-A", "proj", "worker"]:
                worker = venv.process("worker", [*command, "--concurrency", "1"], project)
                processes.append(worker)
                worker.start_in(project)
                wait_ready(worker)
            else:
                raise AssertionError(f"the README shows a command this test cannot follow: {shlex.join(command)}")
        assert [process.name for process in processes] == ["web", "worker"]

        pk = venv.run(
            ["python", "manage.py", "shell", "-c", "from chat.models import Room; print(Room.objects.create(name='lobby').pk)"],
            project,
        ).split()[-1]  # shell may print an import note first
        page = open_page(f"http://127.0.0.1:{port}/rooms/{pk}/")  # waits for the subscription
        venv.run(
            ["python", "manage.py", "shell", "-c",
             f"from chat.models import Message; Message.objects.create(room_id={pk}, text='hello from the shell')"],
            project,
        )
        expect(page.locator("#messages")).to_contain_text("hello from the shell", timeout=STEP_TIMEOUT * 1000)
    finally:
        for process in processes:
            process.stop()
            print(f"--- {process.name} ({shlex.join(process.args)}):\n{process.log()}")  # shown if it fails
        redis.stop()
