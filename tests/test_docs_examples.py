"""Every code example in ``docs/*.rst`` runs here.

The first line of a ``.. code-block:: python`` says what the block is:

- ``# settings``: a settings fragment. It is executed, and what it sets is validated:
  ``TURBO_ASYNC`` by ``turbo_async.conf.load``, ``CHANNEL_LAYERS`` by the system checks (no
  warning), ``CELERY_*`` names against Celery's known settings.
- ``# file: path`` / ``# append: path`` (and ``{# file: path #}`` in templates): a file of the
  example project of the page. The project is made for real (``startproject``, ``startapp``, the
  files written) and checked in a subprocess: ``check``, migrations, ``turbo_streams``, a saved
  message broadcast, the template rendered with its subscription.
- ``# before: path`` / ``# after: path``: turbo-django code and its turbo_async version. The
  "after" block runs; the "before" block compiles and may differ from it only in imports.
- anything else: executed in the test process (test settings: eager Celery, in-memory layer,
  test database). ``TestCase`` classes it defines are run, and so are ``test_*`` functions, with
  their pytest fixtures.

Shell commands (``bash``) and diagrams (``text``) are not executed.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import unittest
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from django.test import TestCase, override_settings

from tests.services import ROOT
from turbo_async import conf
from turbo_async.checks import _check_hook_names, _check_hook_signatures, check_channel_layer
from turbo_async.streams import ModelStream

DOCS = ROOT / "docs"
HEADER = re.compile(r"^(?:#|\{#)\s*(settings|file|append|before|after)\b:?\s*([^\s#]*)")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str

    @property
    def kind(self) -> str:
        match = HEADER.match(self.code)
        return match.group(1) if match else "run"

    @property
    def path(self) -> str:
        match = HEADER.match(self.code)
        return match.group(2) if match else ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks() -> list[Block]:
    blocks: list[Block] = []
    for page in sorted(DOCS.glob("*.rst")):
        lines = page.read_text().splitlines()
        index = 0
        while index < len(lines):
            directive = re.match(r"^(\s*)\.\. code-block::\s*(\S+)", lines[index])
            index += 1
            if directive is None:
                continue
            indent = len(directive.group(1))
            body: list[str] = []
            start = index
            while index < len(lines) and (
                not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
            ):
                body.append(lines[index])
                index += 1
            content = [line for line in body if not re.match(r"^\s+:\w[\w-]*:", line)]
            code = textwrap.dedent("\n".join(content)).strip("\n") + "\n"
            blocks.append(Block(page.name, start, directive.group(2), code))
    return blocks


BLOCKS = read_blocks()
PYTHON = [block for block in BLOCKS if block.language == "python"]


def test_docs_have_examples() -> None:
    assert len(PYTHON) >= 15, [str(block) for block in PYTHON]


def test_every_example_is_of_a_known_kind() -> None:
    """A misspelt header (``# fiel: ...``) would silently turn a file into a run block."""
    for block in BLOCKS:
        first = block.code.splitlines()[0]
        if re.match(r"^(#|\{#)\s*\w+:\s*\S+\.\w+", first):
            assert block.kind in ("file", "append", "before", "after"), f"{block}: {first}"


# -- run blocks ------------------------------------------------------------------------------


def run_tests_defined(namespace: dict[str, Any], request: pytest.FixtureRequest) -> int:
    ran = 0
    for name, value in list(namespace.items()):
        if isinstance(value, type) and issubclass(value, TestCase) and value is not TestCase:
            suite = unittest.defaultTestLoader.loadTestsFromTestCase(value)
            result = unittest.TestResult()
            suite.run(result)
            problems = result.failures + result.errors
            assert not problems, "\n".join(trace for _, trace in problems)
            ran += result.testsRun
        elif name.startswith("test_") and callable(value):
            parameters = inspect.signature(value).parameters
            value(**{p: request.getfixturevalue(p) for p in parameters})
            ran += 1
    return ran


@pytest.mark.django_db
@pytest.mark.parametrize("block", [b for b in PYTHON if b.kind == "run"], ids=str)
def test_example_runs(block: Block, request: pytest.FixtureRequest) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_example_{block.page[:-4]}_{block.line}"}
    exec(compile(block.code, str(block), "exec"), namespace)
    if "def test_" in block.code or "(TestCase)" in block.code:
        assert run_tests_defined(namespace, request) > 0


# -- settings fragments ----------------------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in PYTHON if b.kind == "settings"], ids=str)
def test_settings_fragment_is_valid(block: Block) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block.code, str(block), "exec"), namespace)
    names = [name for name in namespace if name.isupper()]
    assert names, f"{block} sets nothing"
    if "TURBO_ASYNC" in namespace:
        conf.load(namespace["TURBO_ASYNC"])
    if "CHANNEL_LAYERS" in namespace:
        with override_settings(CHANNEL_LAYERS=namespace["CHANNEL_LAYERS"]):
            assert check_channel_layer() == []
    for name in names:
        if name.startswith("CELERY_"):
            assert name[len("CELERY_"):].lower() in CELERY_DEFAULTS, f"{name} is not a Celery setting"
    if "CELERY_BROKER_TRANSPORT_OPTIONS" in namespace:
        from kombu.transport.redis import Channel, SentinelChannel

        sentinel = str(namespace.get("CELERY_BROKER_URL", "")).startswith("sentinel://")
        known = (SentinelChannel if sentinel else Channel).from_transport_options
        unknown = set(namespace["CELERY_BROKER_TRANSPORT_OPTIONS"]) - set(known)
        assert not unknown, f"{block}: not options of kombu's Redis transport: {sorted(unknown)}"
    if "LOGGING" in namespace:
        # dictConfig in a process of its own: it would reconfigure this one's logging.
        script = f"import logging.config; logging.config.dictConfig({namespace['LOGGING']!r})"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{block}: {result.stderr}"


# -- turbo-django side by side ---------------------------------------------------------------


def pairs() -> list[tuple[Block, Block]]:
    before = {b.path: b for b in PYTHON if b.kind == "before"}
    after = {b.path: b for b in PYTHON if b.kind == "after"}
    assert set(before) == set(after), (sorted(before), sorted(after))
    return [(before[path], after[path]) for path in sorted(before)]


@pytest.mark.parametrize(("before", "after"), pairs(), ids=lambda b: str(b))
def test_turbo_django_code_changes_only_its_imports(before: Block, after: Block) -> None:
    compile(before.code, str(before), "exec")
    changed = [
        line[1:].strip()
        for line in difflib.unified_diff(
            before.code.splitlines()[1:], after.code.splitlines()[1:], lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed and all(line.startswith(("import ", "from ")) for line in changed), changed


@pytest.mark.parametrize("after", [b for b in PYTHON if b.kind == "after"], ids=str)
def test_migrated_code_runs_and_passes_the_checks(after: Block) -> None:
    # Relative imports resolve in the demo's chat app, whose models the examples use.
    namespace: dict[str, Any] = {"__name__": "demo.chat.docs_example", "__package__": "demo.chat"}
    exec(compile(after.code, str(after), "exec"), namespace)
    streams = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, ModelStream)]
    assert streams
    for stream in streams:
        assert _check_hook_names(stream) + _check_hook_signatures(stream) == []


# -- the quickstart, as a new project --------------------------------------------------------

VERIFY = '''
import os, sys
import django
from io import StringIO

os.environ["DJANGO_SETTINGS_MODULE"] = "proj.settings"
django.setup()
from django.core.management import call_command

call_command("check", fail_level="WARNING")
call_command("makemigrations", "chat", verbosity=0)
call_command("migrate", verbosity=0)
out = StringIO()
call_command("turbo_streams", stdout=out, no_color=True)
print(out.getvalue())

from django.template.loader import render_to_string
from chat.models import Message, Room
from turbo_async.testing import capture_broadcasts

with capture_broadcasts() as broadcasts:  # the list stream
    room = Room.objects.create(name="Lobby")
[item] = broadcasts.assert_broadcasts("chat:RoomListStream", count=1, action="append", target="rooms")
assert item.html.strip() == f'<li><a href="/rooms/{room.pk}/">Lobby</a></li>', item.html
rooms = render_to_string("chat/rooms.html", {"rooms": Room.objects.all()})
assert "signed-channel-name" in rooms and ">Lobby</a>" in rooms, rooms

with capture_broadcasts() as broadcasts:  # the object stream
    message = Message.objects.create(room=room, text="Hello <there>")
[frame] = broadcasts.assert_broadcasts(room, count=1, action="append", target="messages")
assert frame.html.strip() == f'<p id="message-{message.pk}">Hello &lt;there&gt;</p>', frame.html

page = render_to_string("chat/room.html", {"room": room})
assert "signed-channel-name" in page and "Hello &lt;there&gt;" in page, page

import proj, proj.asgi
assert proj.asgi.application is not None
assert "turbo_async.broadcast" in proj.celery_app.tasks
print("QUICKSTART OK")
'''


def write_project(directory: Path, blocks: list[Block]) -> None:
    def run(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "django", *args], cwd=directory, check=True, env=project_env())

    run("startproject", "proj", ".")
    run("startapp", "chat")
    for block in blocks:
        target = directory / block.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if block.kind == "append":
            target.write_text(target.read_text() + "\n" + block.code)
        else:
            target.write_text(block.code)


def project_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)  # turbo_async from this checkout
    return env


def test_checks_page_loads_the_celery_app(tmp_path: Path) -> None:
    """checks.rst's fix for turbo_async.W003, written into a fresh ``startproject``: the app the
    web process then uses is the project's, configured from its settings, not Celery's fallback."""
    blocks = [b for b in BLOCKS if b.page == "checks.rst" and b.kind in ("file", "append")]
    assert {b.path for b in blocks} == {"proj/celery.py", "proj/__init__.py"}
    write_project(tmp_path, blocks)
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings

        settings.CELERY_BROKER_URL = "redis://broker.invalid:6379/0"
        django.setup()
        from celery import current_app
        from turbo_async.checks import check_celery, fallback_app

        assert current_app.main == "proj" and not fallback_app(current_app), current_app
        assert current_app.conf.broker_url == "redis://broker.invalid:6379/0"
        assert check_celery() == [], check_celery()
        print("APP LOADED")
        """
    )
    env = project_env() | {"DJANGO_SETTINGS_MODULE": "proj.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "APP LOADED" in result.stdout


def test_quickstart_project_works(tmp_path: Path) -> None:
    blocks = [b for b in BLOCKS if b.page == "quickstart.rst" and b.kind in ("file", "append")]
    paths = {b.path for b in blocks}
    assert {"proj/settings.py", "proj/celery.py", "proj/asgi.py", "chat/streams.py"} <= paths
    write_project(tmp_path, blocks)
    (tmp_path / "verify.py").write_text(VERIFY)
    result = subprocess.run(
        [sys.executable, "verify.py"], cwd=tmp_path, env=project_env(), capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "QUICKSTART OK" in result.stdout
    assert re.search(r"chat:MessageStream\s+chat\.Message\s+on_save, on_delete\s+celery", result.stdout)


# -- README and quickstart: the same five steps ----------------------------------------------


def readme_and_quickstart() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The code blocks of the five steps, in order, as (language, code): the README's (from its
    "## Install" to the end of "## Five steps") and the quickstart's (up to "The development loop")."""
    from tests.e2e.test_clean_install import readme_steps

    readme = [
        ({"django": "html+django"}.get(language, language), code)
        for language, code in re.findall(r"```(\w+)\n(.*?)```", readme_steps(), re.S)
    ]
    steps = [
        (b.language, b.code) for b in BLOCKS
        if b.page == "quickstart.rst" and b.line < QUICKSTART_LOOP_LINE
    ]
    return readme, steps


QUICKSTART_LOOP_LINE = (DOCS / "quickstart.rst").read_text().splitlines().index("The development loop")


def test_readme_and_quickstart_have_the_same_files_in_the_same_order() -> None:
    readme, quickstart = readme_and_quickstart()
    files = [block for block in readme if block[0] != "bash"]
    assert files and files == [block for block in quickstart if block[0] != "bash"], "\n".join(
        difflib.unified_diff(
            [code for _, code in quickstart if _ != "bash"], [code for _, code in files if _ != "bash"], lineterm=""
        )
    )


def test_readme_and_quickstart_run_the_same_commands() -> None:
    readme, quickstart = readme_and_quickstart()
    assert "".join(code for language, code in readme if language == "bash") == "".join(
        code for language, code in quickstart if language == "bash"
    )


def test_readme_and_quickstart_name_the_same_five_steps() -> None:
    from tests.e2e.test_clean_install import readme_steps

    readme = [
        title.replace("`", "").rstrip(".")
        for title in re.findall(r"^\*\*(\d\. [^*]+)\*\*", readme_steps(), re.M)
    ]
    quickstart = [
        title.replace("``", "")
        for title in re.findall(r"^(\d\. .+)\n-+$", (DOCS / "quickstart.rst").read_text(), re.M)
    ]
    assert readme == quickstart == [
        "1. Install and configure", "2. Route the WebSockets", "3. Write streams.py",
        "4. Subscribe in templates", "5. Run it",
    ]


def test_every_test_the_docs_name_exists() -> None:
    """docs/guarantees.rst (and the others) name the test behind each promise: it must exist."""
    import ast

    missing = []
    for doc in sorted((ROOT / "docs").glob("*.rst")):
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text()):
            source = ROOT / path
            defined = (
                {node.name for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
                if source.exists() else set()
            )
            if name not in defined:
                missing.append(f"{doc.name}: {path}::{name}")
    assert missing == []
