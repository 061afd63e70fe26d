"""Broadcasts as Flower shows them: a real Flower process on the test broker, fed by the real
worker's task events, read through its HTTP API and its task list page (Debian's Chromium)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from demo.chat.models import Message, Room
from tests.conftest import LOG_DIR
from tests.factories import MessageFactory, RoomFactory
from tests.services import CeleryWorker, Process, RedisServer, free_port, subprocess_env, wait_for_port
from turbo_async import outbox, suppress

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
# The docs show this screenshot; a run writes it there only when asked (TURBO_UPDATE_SCREENSHOTS=1),
# so that running the tests leaves the working tree clean.
SCREENSHOT = (
    Path(__file__).resolve().parents[2] / "docs" / "_static"
    if os.environ.get("TURBO_UPDATE_SCREENSHOTS") == "1"
    else Path(os.environ["TURBO_TEST_TMP"])
) / "flower-tasks.png"
CHROMIUM = "/usr/bin/chromium"
COLUMNS = "name,args,result,state,received,runtime,worker"  # what demo/run.py and the docs use
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class Flower(Process):
    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(
            "flower",
            [
                sys.executable, "-m", "celery", "-A", "workers", "flower",
                f"--port={self.port}", "--address=127.0.0.1", f"--tasks_columns={COLUMNS}",
            ],
            LOG_DIR, subprocess_env(FLOWER_UNAUTHENTICATED_API="true"),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def start(self) -> None:
        super().start()
        wait_for_port(self.port, process=self.process, timeout=30)

    def wait_for_worker_events(self, worker: CeleryWorker, timeout: float = 20) -> None:
        """Flower only knows events sent after it started listening: wait for a heartbeat."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/workers?json=1")["data"]:  # filled from worker-heartbeat events
                return
            time.sleep(0.2)
        raise TimeoutError(f"Flower saw no worker events in {timeout}s:\n{self.log()}\n{worker.log()}")

    def wait_for_task(self, name: str, args: str, timeout: float = 20) -> dict[str, Any]:
        """The task called ``name`` whose args start with ``args``, once it has succeeded."""
        deadline = time.monotonic() + timeout
        tasks: dict[str, Any] = {}
        while time.monotonic() < deadline:
            tasks = self.get(f"/api/tasks?taskname={name}")
            for task in tasks.values():
                if (task["args"] or "").startswith(args):
                    if task["state"] == "SUCCESS":
                        return dict(task)
            time.sleep(0.2)
        raise AssertionError(f"no successful {name}{args} in Flower after {timeout}s: {tasks}")


    def wait_for_search(self, query: str, name: str, timeout: float = 20) -> dict[str, Any]:
        """The succeeded task called ``name`` among those Flower's search ``query`` finds (the
        search box of the task list, and ``/api/tasks?search=``)."""
        deadline = time.monotonic() + timeout
        tasks: dict[str, Any] = {}
        while time.monotonic() < deadline:
            tasks = self.get("/api/tasks?" + urllib.parse.urlencode({"search": query}))
            for task in tasks.values():
                if task["name"] == name and task["state"] == "SUCCESS":
                    return dict(task)
            time.sleep(0.2)
        raise AssertionError(f"Flower's search {query!r} found no successful {name} after {timeout}s: {tasks}")


@pytest.fixture(scope="module")
def flower(redis_server: RedisServer, worker: CeleryWorker) -> Iterator[Flower]:
    process = Flower()
    process.start()
    try:
        process.wait_for_worker_events(worker)
        yield process
    finally:
        process.stop()


@pytest.fixture
def saved_message(flower: Flower, live_broker: RedisServer, transactional_db: None) -> Any:
    """A message created after Flower started, so Flower sees its broadcast."""
    with suppress():
        room = RoomFactory(name="Flower")
    return MessageFactory(room=room, text="Seen in Flower")


def test_broadcast_shows_up_under_its_hook_name_with_label_and_pk(
    flower: Flower, saved_message: Any
) -> None:
    task = flower.wait_for_task("chat.MessageStream.on_save", f"('chat.message', {saved_message.pk}, ")
    assert task["name"] == "chat.MessageStream.on_save"
    assert task["args"] == f"('chat.message', {saved_message.pk}, 'save', True)"
    assert task["state"] == "SUCCESS"


def test_broadcast_result_counts_frames_and_streams(flower: Flower, saved_message: Any) -> None:
    # The task ignores results (no backend writes), yet the task-succeeded event carries it.
    task = flower.wait_for_task("chat.MessageStream.on_save", f"('chat.message', {saved_message.pk}, ")
    assert task["result"] == "{'frames': 1, 'streams': 1, 'changes': 1}"


@pytest.mark.browser
def test_task_list_page_shows_each_hook_with_args_and_result(
    flower: Flower, saved_message: Any
) -> None:
    """Takes the screenshot docs/monitoring.rst shows (Playwright's sync API: no event loop here)."""
    if not Path(CHROMIUM).exists():
        raise AssertionError("Chromium is missing: apt-get install chromium (or make system-deps)")
    from playwright.sync_api import expect, sync_playwright

    pk = saved_message.pk
    saved_message.text = "Edited in Flower"
    saved_message.save()
    flower.wait_for_task("chat.MessageStream.on_save", f"('chat.message', {pk}, 'save', False)")
    saved_message.delete()  # only now: a save reaching the worker after the delete skips the row
    flower.wait_for_task("chat.MessageStream.on_delete", f"('chat.message', {pk}, 'delete', ")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 620})
            page.goto(flower.url + "/tasks")
            rows = page.locator("#tasks-table tbody tr")
            for hook in ("chat.MessageStream.on_delete", "chat.MessageStream.on_save"):
                row = rows.filter(has_text=hook).filter(has_text=f"'chat.message', {pk},").first
                expect(row).to_be_visible(timeout=15_000)
                expect(row).to_contain_text("SUCCESS")
                expect(row).to_contain_text("'frames': 1, 'streams': 1")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


# -- the demo's actions, batched as under load ---------------------------------------------------

HOOK = re.compile(r"chat\.\w+\.(on_save|on_delete|append|refresh|refresh\.debounced)( x\d+)?")


def test_the_demos_actions_show_up_under_hook_names_batched_or_not(
    flower: Flower, live_broker: RedisServer, transactional_db: None
) -> None:
    """Each action through the demo's views; posting and deleting a message run in one
    transaction (as under ATOMIC_REQUESTS), so their two changes, the message's hook and the
    room list's refresh, reach the broker as one batch, as they do under load."""
    client = Client()

    def act(path: str, data: dict[str, str] | None = None, *, atomic: bool = False) -> None:
        with transaction.atomic() if atomic else nullcontext():
            response = client.post(path, data or {})
        assert response.status_code == 303, response.content
        # Published before the next action commits, so that a batch holds one action's changes.
        assert outbox.flush(timeout=10)

    act("/rooms/new/", {"name": "Batched in Flower"})
    flower.wait_for_task("chat.RoomListStream.append", "('chat:RoomListStream', [], 'append')")
    room = Room.objects.get(name="Batched in Flower")
    act(f"/rooms/{room.pk}/messages/new/", {"author": "Ann", "text": "Two hooks"}, atomic=True)
    message = Message.objects.get(room=room)
    # What docs/monitoring.rst tells a reader to type: a row's broadcasts, batched or not...
    row = f"args:\"('chat.message', {message.pk},\""
    posted = flower.wait_for_search(row, "chat.MessageStream.on_save + chat.RoomListStream.refresh")
    assert posted["args"] == f"('chat.message', {message.pk}, 'save', True); ('chat:RoomListStream', [], 'refresh')"
    assert posted["result"] == "{'frames': 1, 'streams': 1, 'changes': 2}"
    # Each action once the previous one reached the worker: a row deleted first is skipped.
    act(f"/messages/{message.pk}/edit/", {"text": "Edited"})
    flower.wait_for_search(row, "chat.MessageStream.on_save")
    act(f"/messages/{message.pk}/delete/", atomic=True)
    flower.wait_for_search(row, "chat.MessageStream.on_delete + chat.RoomListStream.refresh")
    # ...and a hook's broadcasts, batched or not.
    named = flower.get("/api/tasks?" + urllib.parse.urlencode({"search": "name:MessageStream.on_delete"}))
    assert any(task["name"] == "chat.MessageStream.on_delete + chat.RoomListStream.refresh" for task in named.values())
    # taskname= matches whole names: it misses the batch (what docs/monitoring.rst warns about).
    exact = flower.get("/api/tasks?taskname=chat.MessageStream.on_delete")
    assert all(task["name"] == "chat.MessageStream.on_delete" for task in exact.values())
    assert flower.get("/api/tasks?taskname=turbo_async.batch") == {}
    names = {task["name"] for task in flower.get("/api/tasks").values()}
    assert names, "Flower lists no task at all"
    for name in names:
        assert all(HOOK.fullmatch(part) for part in name.split(" + ")), f"not named after hooks: {name!r}"
