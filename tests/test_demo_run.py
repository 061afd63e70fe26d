"""``make demo``'s supervisor (demo/run.py) as a user runs it: a real subprocess that starts real
Redis, Celery worker, Flower and uvicorn processes, stopped with Ctrl-C (SIGINT). It runs with no
DJANGO_* variable set: demo/settings.py alone would refuse to start without a key
(tests/test_demo_settings.py), the supervisor gives its processes one, and DEBUG."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import ROOT, free_port

pytestmark = pytest.mark.integration

URL_LINE = re.compile(r"^\s+(Web|Flower|Redis):\s+((?:http|redis)://\S+)$")
UP_LINE = re.compile(r"^  turbo_async demo is up \((\d+\.\d)s\); Ctrl-C stops it\.$")


def process_tree(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of ``pid``'s descendants, from /proc (start time guards against reuse)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: set[tuple[int, str]] = set()
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        stat = _stat(child)
        if stat is not None:
            found.add((child, stat[19]))
            todo.extend(children.get(child, []))
    return found


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int, started: str) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[19] == started


@dataclass
class Demo:
    process: subprocess.Popen[str]
    env: dict[str, str]
    launched: float  # time.monotonic() just before the command was started
    urls: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    up_line: int | None = None  # index in output of "turbo_async demo is up (N.Ns)"
    up_seen_after: float | None = None  # seconds from launch until this test read that line
    tree: set[tuple[int, str]] = field(default_factory=set)  # (pid, start time) under it, once up
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if UP_LINE.match(line.rstrip()) and self.up_line is None:
                self.up_seen_after = time.monotonic() - self.launched
                self.up_line = len(self.output)
            self.output.append(line)
            match = URL_LINE.match(line.rstrip())
            if match:
                self.urls[match[1]] = match[2]
                if len(self.urls) == 3:
                    self.ready.set()

    def log(self) -> str:
        return "".join(self.output[-60:])

    def full_output(self) -> str:
        """Everything it printed, once it has exited."""
        assert self.process.poll() is not None and self.reader is not None
        self.reader.join(10)
        return "".join(self.output)


def demo_env(db_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBO_TEST_", "DJANGO_"))}
    env.pop("REDIS_URL", None)  # the supervisor starts its own Redis
    env.update(
        PORT=str(free_port()), FLOWER_PORT=str(free_port()), REDIS_PORT=str(free_port()),
        DJANGO_DB_PATH=str(db_path),
    )
    return env


def start(env: dict[str, str]) -> Demo:
    launched = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "run.py")], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    demo = Demo(process, env, launched)
    demo.reader = threading.Thread(target=demo.read, daemon=True)
    demo.reader.start()
    if not demo.ready.wait(90):
        stop(demo)
        raise AssertionError(f"demo/run.py printed no URLs within 90s:\n{demo.log()}")
    return demo


def stop(demo: Demo) -> int:
    """Ctrl-C, and the supervisor's exit status."""
    if demo.process.poll() is None:
        demo.process.send_signal(signal.SIGINT)
    try:
        return demo.process.wait(30)
    except subprocess.TimeoutExpired:
        demo.process.kill()
        raise AssertionError(f"demo/run.py still running 30s after Ctrl-C:\n{demo.log()}") from None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = start(demo_env(tmp_path_factory.mktemp("demo") / "demo.sqlite3"))
    # What runs under it, recorded while it runs: the Ctrl-C tests below check that it is all gone.
    running.tree = process_tree(running.process.pid)
    yield running
    stop(running)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, (url, response.status)
        return str(response.read().decode())


def test_make_demo_serves_the_room_list_and_static_files(demo: Demo) -> None:
    """Without DJANGO_SECRET_KEY or DJANGO_DEBUG: static files are served, so DEBUG is on."""
    assert not {"DJANGO_SECRET_KEY", "DJANGO_DEBUG"} & set(demo.env)
    page = fetch(demo.urls["Web"])
    assert 'id="rooms"' in page
    for room in ("General", "Random", "Help"):  # seeded into the empty database
        assert room in page, demo.log()
    assert "Turbo" in fetch(demo.urls["Web"] + "static/turbo_async/js/turbo.es2017-umd.js")


def test_make_demo_runs_flower_with_the_worker(demo: Demo) -> None:
    deadline = time.monotonic() + 20
    workers: dict[str, object] = {}
    while not workers and time.monotonic() < deadline:  # Flower asks the workers over the broker
        workers = json.loads(fetch(demo.urls["Flower"] + "api/workers?refresh=1"))
        time.sleep(0.2)
    assert any(name.startswith("demo@") for name in workers), (workers, demo.log())


def test_a_save_in_a_demo_process_is_broadcast_by_its_worker(demo: Demo) -> None:
    """manage.py (like the web process) publishes to the demo's Redis, not Celery's default.
    It runs with the key make demo made, as demo/settings.py's refusal without one advises."""
    key = (ROOT / ".demo" / "secret_key").read_text().strip()
    env = {**demo.env, "REDIS_URL": demo.urls["Redis"], "DJANGO_SECRET_KEY": key}
    code = (
        "from demo.chat.models import Message, Room; "
        "print('pk', Message.objects.create(room=Room.objects.first(), text='hi').pk)"
    )
    shell = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "manage.py"), "shell", "-c", code], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    pk = re.findall(r"^pk (\d+)$", shell.stdout, re.M)[0]
    deadline = time.monotonic() + 20
    found: list[dict[str, str]] = []
    while not found and time.monotonic() < deadline:
        tasks = json.loads(fetch(demo.urls["Flower"] + "api/tasks?state=SUCCESS"))
        found = [t for t in tasks.values() if t["args"] == f"('chat.message', {pk}, 'save', True)"]
        time.sleep(0.2)
    assert [t["name"] for t in found] == ["chat.MessageStream.on_save"], (tasks, demo.log())


def test_make_demo_prints_and_serves_the_metrics(demo: Demo) -> None:
    """Runs after a save was broadcast (above): the worker's pool process counted it."""
    line = next((line for line in demo.output if line.startswith("  Metrics: ")), None)
    assert line is not None, demo.log()
    web, worker = re.findall(r"(http://\S+/metrics) \((web|worker)\)", line)
    assert (web[1], worker[1]) == ("web", "worker")
    assert web[0] == demo.urls["Web"] + "metrics"
    assert "# TYPE turbo_async_sockets gauge" in fetch(web[0])
    assert 'turbo_async_broadcasts_total{hook="chat.message.on_save"}' in fetch(worker[0])


def test_make_demo_says_it_is_up_once_everything_answers(demo: Demo) -> None:
    assert demo.up_line is not None, demo.log()
    before_up = "".join(demo.output[: demo.up_line])
    # The web server answered an HTTP request (not just opened its port)...
    assert re.search(r'^ +web \| .*"GET / HTTP/1\.1" 200', before_up, re.M), before_up
    # ...and Flower started after the worker was ready, so that its first inspection is answered.
    worker_ready = re.search(r"^worker \| .* demo@\S+ ready\.$", before_up, re.M)
    flower_first = re.search(r"^flower \| ", before_up, re.M)
    assert worker_ready and flower_first and worker_ready.start() < flower_first.start(), before_up


def test_make_demo_prints_its_start_up_time_since_the_command_started(demo: Demo) -> None:
    """The figure counts from the process start (tests below: from make's when make ran it), so
    it cannot be more than what this test saw from launching it to reading the line."""
    assert demo.up_line is not None and demo.up_seen_after is not None, demo.log()
    match = UP_LINE.match(demo.output[demo.up_line].rstrip())
    assert match is not None
    # Printed rounded to 0.1 s, and read by this test a moment after the demo measured it.
    assert 0 < float(match[1]) <= demo.up_seen_after + 0.2


def test_make_demo_prints_no_deprecation_or_flower_inspect_warnings(demo: Demo) -> None:
    """Last of the tests on the running demo: it asks Flower to inspect the worker again, then
    stops the demo to read everything every process printed."""
    assert json.loads(fetch(demo.urls["Flower"] + "api/workers?refresh=1")), demo.log()
    assert stop(demo) == 0
    output = demo.full_output()
    assert "Stopped." in output
    assert "deprecat" not in output.lower(), output
    assert "Inspect method" not in output, output


def test_make_demo_prints_no_warning_at_start(demo: Demo) -> None:
    """Up to "demo is up": no WARNING of Redis (its log file has them), of Celery (as root) or of
    anything else, and no note that uvicorn found no lifespan support."""
    assert demo.up_line is not None, demo.log()
    before_up = "".join(demo.output[: demo.up_line])
    assert "warning" not in before_up.lower(), before_up
    assert "lifespan" not in before_up, before_up
    assert " redis | " not in before_up, before_up


def test_make_demo_installs_the_demo_extra_only(tmp_path: Path) -> None:
    """What make would run on a machine with no virtualenv yet (``make -n``: printed, not run)."""
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert installs and all("[dev]" not in line and "[test]" not in line for line in installs), result.stdout
    assert f'{venv}/bin/pip install --quiet ".[demo]"' in result.stdout
    assert f"{venv}/bin/python demo/run.py" in result.stdout


def test_start_up_time_counts_the_interpreter_start() -> None:
    code = "import time; time.sleep(1); from demo import run; print(run._boot_clock() - run.command_started())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) >= 1.0


PROBE = "from demo import run; print(run._boot_clock() - run.command_started())\n"


@pytest.mark.parametrize(
    "recipe",
    [
        "\t@sleep 1\n\t@$(PY) probe.py\n",  # no shell syntax: make runs python itself
        "\t@sleep 1; $(PY) probe.py\n",  # make runs a shell that runs python
    ],
    ids=["direct", "through-a-shell"],
)
def test_start_up_time_under_make_counts_from_make(tmp_path: Path, recipe: str) -> None:
    """``make demo``: what the user waits for starts with make (its virtualenv check)."""
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "Makefile").write_text(f"demo:\n{recipe}")
    result = subprocess.run(
        ["make", "-s", "demo", f"PY={sys.executable}"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert float(result.stdout) >= 1.0


def test_start_up_time_of_another_parent_counts_from_this_process() -> None:
    """A shell run by something that is not make (here pytest's Python): this process's start."""
    code = (
        "import os; from demo import run; "
        "print(run.command_started() == int(run._stat('self')[19]) / os.sysconf('SC_CLK_TCK'))"
    )
    result = subprocess.run(
        ["sh", "-c", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@dataclass
class Stopped:
    demo: Demo
    tree: set[tuple[int, str]]
    exit_code: int
    db_path: Path


@pytest.fixture(scope="module")
def stopped(demo: Demo) -> Stopped:
    """The module's demo, stopped with Ctrl-C (by the last test on the running demo, or here);
    what ran under it was recorded while it ran. One demo less to start: each start is several
    seconds of Redis, worker, Flower and uvicorn."""
    return Stopped(demo, demo.tree, stop(demo), Path(demo.env["DJANGO_DB_PATH"]))


def test_ctrl_c_stops_every_process_it_started(stopped: Stopped) -> None:
    log = stopped.demo.log()
    assert len(stopped.tree) >= 5, (stopped.tree, log)  # redis, worker and its pool, flower, web
    assert stopped.exit_code == 0, log
    left = [pid for pid, started in stopped.tree if alive(pid, started)]
    assert left == [], f"still running after Ctrl-C: {left}\n{log}"
    assert "Stopped." in log


def test_runs_again_on_the_same_ports_and_database(stopped: Stopped) -> None:
    again = start(stopped.demo.env)
    try:
        assert "General" in fetch(again.urls["Web"])
    finally:
        stop(again)
    with sqlite3.connect(stopped.db_path) as db:  # seeded on the first run only
        assert db.execute("SELECT count(*) FROM chat_room").fetchone() == (3,)

