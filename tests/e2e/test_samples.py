"""turbo-django 0.4.4's sample apps, renamed ``turbo`` -> ``turbo_async`` and nothing else
(tests/samples/), run as a user runs them: uvicorn (``--ws websockets``) serving the project's
ASGI app, its own Celery worker (``celery -A tests.samples worker``), a real Redis as broker and
channel layer, and Debian's Chromium. Every flow is the sample's own: its forms, its links, its
``manage.py shell`` lines (run here as ``python -m django shell -c`` subprocesses).

The sample project has its own database file and Redis database (1), so the suite's own worker
never sees its tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import LOG_DIR
from tests.e2e.conftest import INSTRUMENT, TIMEOUT_MS, Chromium, wait_subscribed
from tests.services import ROOT, CeleryWorker, Process, RedisServer, Uvicorn, subprocess_env

pytestmark = [pytest.mark.browser]

SETTINGS = "tests.samples.settings"
SHORT_MS = 5_000  # every wait of these tests: the pipeline takes well under a second here
SHELL_TIMEOUT = 60.0  # one `django shell -c` process: start-up (Django, Celery) and the command


# -- the sample project's processes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def samples_env(redis_server: RedisServer) -> dict[str, str]:
    """The environment of every process of the sample project, its database made."""
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "TURBO_SAMPLES_DATABASE": str(Path(os.environ["TURBO_TEST_TMP"]) / "samples.sqlite3"),
        "TURBO_SAMPLES_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
        # The browser fixture sets it for this package's test process; the servers keep Django's checks.
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",
    }
    django_admin(env, "migrate", "--run-syncdb")
    return env


def django_admin(env: dict[str, str], *args: str) -> str:
    """``python -m django <args>`` (django-admin, which is what manage.py runs) with the samples'
    settings; its standard output. A failure fails the test with the command's output."""
    result = subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=subprocess_env(**env),
        capture_output=True, text=True, timeout=SHELL_TIMEOUT,
    )
    assert result.returncode == 0, f"django-admin {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def shell(env: dict[str, str], code: str) -> Any:
    """Run ``code`` in ``manage.py shell -c``; what it prints last, as JSON, is returned."""
    lines = django_admin(env, "shell", "-v", "0", "-c", code).strip().splitlines()
    return json.loads(lines[-1]) if lines else None


@pytest.fixture(scope="module")
def samples_web(samples_env: dict[str, str]) -> Iterator[Uvicorn]:
    """uvicorn, and the worker behind it: both boot at once (each takes seconds), and both are
    ready before any test runs."""
    worker = CeleryWorker(LOG_DIR, name="samples-worker", app="tests.samples", **samples_env)
    web = Uvicorn(LOG_DIR, name="samples-web", app="tests.samples.asgi:application", **samples_env)
    try:
        Process.start(worker)
        web.start()  # returns once its port is open
        worker.wait_ready()
        yield web
    finally:
        web.stop()
        worker.stop()


# -- browser visitors ------------------------------------------------------------------------------


@dataclass
class Visitor:
    """One browser context on a page, with the WebSocket messages its page received."""

    page: Any
    received: list[dict[str, Any]] = field(default_factory=list)

    def wait_for_message(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        # Playwright's sync API delivers events while a call of it runs: wait in short page waits.
        deadline = time.monotonic() + SHORT_MS / 1000
        while time.monotonic() < deadline:
            for message in self.received:
                if predicate(message):
                    return message
            self.page.wait_for_timeout(50)
        raise AssertionError(f"no WebSocket message {what} within {SHORT_MS} ms; received {self.received}")


Visit = Callable[..., Visitor]


@pytest.fixture
def visit(chromium: Chromium, samples_web: Uvicorn) -> Iterator[Visit]:
    """``visit(path, subscriptions=n, cookies=[...])``: a new visitor (own context, own cookies) on
    the sample project's ``path``, once the server acknowledged ``n`` subscriptions. Uncaught
    JavaScript errors fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []
    expect.set_options(timeout=SHORT_MS)

    def visit_(path: str, subscriptions: int = 0, cookies: list[dict[str, Any]] | None = None) -> Visitor:
        context = chromium.get().new_context(locale="en-US", timezone_id="UTC")
        contexts.append(context)
        context.set_default_timeout(SHORT_MS)
        context.add_init_script(INSTRUMENT)
        if cookies:
            context.add_cookies([{"url": samples_web.origin, **cookie} for cookie in cookies])
        page = context.new_page()
        visitor = Visitor(page)
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda payload: visitor.received.append(json.loads(payload))),
        )
        response = page.goto(samples_web.origin + path)
        assert response is not None and response.status == 200, f"GET {path}: {response and response.status}"
        if subscriptions:
            wait_subscribed(page, subscriptions, timeout=SHORT_MS)
        return visitor

    yield visit_
    for context in contexts:
        context.close()
    expect.set_options(timeout=TIMEOUT_MS)
    assert not errors, f"JavaScript errors: {errors}"


def unique(text: str) -> str:
    """Rows of one test never match another's: the sample project's database lives for the module."""
    return f"{text} {uuid.uuid4().hex[:6]}"


# -- chat ----------------------------------------------------------------------------------------


def new_room(env: dict[str, str], name: str, *messages: str) -> dict[str, Any]:
    return shell(
        env,
        "import json; from chat.models import Room, Message\n"
        f"room = Room.objects.create(name={name!r})\n"
        f"ids = [Message.objects.create(room=room, text=t).pk for t in {list(messages)!r}]\n"
        "print(json.dumps({'room': room.pk, 'messages': ids}))",
    )


def test_chat_a_room_added_in_one_page_appears_in_the_other(samples_env: dict[str, str], visit: Visit) -> None:
    adder, reader = visit("/chat/", subscriptions=1), visit("/chat/", subscriptions=1)
    name = unique("Lobby")

    adder.page.get_by_label("Room Name").fill(name)
    adder.page.get_by_role("button", name="Add").click()

    expect(reader.page.locator("#room_list li", has_text=name)).to_have_count(1)
    expect(adder.page.locator("#room_list li", has_text=name)).to_have_count(1)
    # The view's answer: render_frame(...).replace(id="create-room-form").response, an empty form.
    expect(adder.page.get_by_label("Room Name")).to_have_value("")


def test_chat_a_message_sent_in_one_page_appears_in_the_other(samples_env: dict[str, str], visit: Visit) -> None:
    room = new_room(samples_env, unique("Room"))
    url = f"/chat/{room['room']}/"
    sender, reader = visit(url, subscriptions=1), visit(url, subscriptions=1)
    text = unique("Hello")

    sender.page.get_by_label("Text").fill(text)
    sender.page.get_by_role("button", name="Send").click()

    expect(reader.page.locator("#messages li")).to_have_count(1)
    expect(reader.page.locator("#messages li")).to_contain_text(text)
    expect(sender.page.locator("#messages li")).to_contain_text(text)
    # MessageCreate redirects to its empty form, inside the send-message frame.
    expect(sender.page.get_by_label("Text")).to_have_value("")


def test_chat_a_message_changed_in_a_shell_changes_in_both_pages(samples_env: dict[str, str], visit: Visit) -> None:
    room = new_room(samples_env, unique("Room"), "Helo")
    (message_id,) = room["messages"]
    url = f"/chat/{room['room']}/"
    first, second = visit(url, subscriptions=1), visit(url, subscriptions=1)
    expect(first.page.locator(f"#message-{message_id}")).to_contain_text("Helo")

    # The sample has no edit form: a message changes in the admin or a shell.
    shell(
        samples_env,
        f"from chat.models import Message\nm = Message.objects.get(pk={message_id})\n"
        "m.text = 'Hello, corrected'\nm.save()",
    )

    for visitor in (first, second):
        expect(visitor.page.locator(f"#message-{message_id}")).to_contain_text("Hello, corrected")
        expect(visitor.page.locator("#messages li")).to_have_count(1)


def test_chat_a_message_removed_in_one_page_disappears_from_the_other(
    samples_env: dict[str, str], visit: Visit
) -> None:
    room = new_room(samples_env, unique("Room"), "Delete me", "Keep me")
    removed, kept = room["messages"]
    url = f"/chat/{room['room']}/"
    remover, reader = visit(url, subscriptions=1), visit(url, subscriptions=1)
    expect(reader.page.locator("#messages li")).to_have_count(2)

    remover.page.locator(f"#message-{removed}").get_by_role("link", name="[Remove]").click()

    expect(reader.page.locator(f"#message-{removed}")).to_have_count(0)
    expect(remover.page.locator(f"#message-{removed}")).to_have_count(0)
    expect(reader.page.locator(f"#message-{kept}")).to_contain_text("Keep me")
    assert shell(samples_env, f"from chat.models import Message\nprint(list(Message.objects.filter(pk__in=[{removed}, {kept}]).values_list('pk', flat=True)))") == [kept]


# -- reminders -------------------------------------------------------------------------------------


def reminders(env: dict[str, str], *texts: str) -> None:
    """The sample's list holds exactly ``texts``."""
    shell(
        env,
        "from reminders.models import Reminder\nReminder.objects.all().delete()\n"
        f"Reminder.objects.bulk_create([Reminder(reminder_text=t) for t in {list(texts)!r}])",
    )


def listed(visitor: Visitor) -> Any:
    return visitor.page.locator("#reminders li")


def test_reminders_add_appends_to_the_list(samples_env: dict[str, str], visit: Visit) -> None:
    reminders(samples_env, "Water the plants")
    visitor = visit("/reminders/")

    visitor.page.get_by_label("Add").fill("Buy milk")  # the form comes in its turbo-frame's src
    visitor.page.get_by_role("button", name="Add", exact=True).click()

    # The answer is render_frame(...).append(id="reminders").response, a turbo-stream.
    expect(listed(visitor)).to_have_text(["Water the plants", "Buy milk"])
    visitor.page.reload()
    expect(listed(visitor)).to_have_text(["Water the plants", "Buy milk"])


def test_reminders_search_replaces_the_list(samples_env: dict[str, str], visit: Visit) -> None:
    reminders(samples_env, "Buy milk", "Call mom", "Buy bread")
    visitor = visit("/reminders/")
    expect(listed(visitor)).to_have_count(3)

    visitor.page.get_by_placeholder("Search").fill("buy")
    visitor.page.get_by_role("button", name="Search").click()
    expect(listed(visitor)).to_have_text(["Buy milk", "Buy bread"])

    # Emptied without a key press: the field's onkeyup calls jQuery, which the sample's base.html
    # loaded from a CDN (left out here); a click on Search submits as the keyup would.
    visitor.page.get_by_placeholder("Search").evaluate("field => { field.value = '' }")
    visitor.page.get_by_role("button", name="Search").click()
    expect(listed(visitor)).to_have_text(["Buy milk", "Call mom", "Buy bread"])


def test_reminders_delete_all_asks_then_empties_the_list(samples_env: dict[str, str], visit: Visit) -> None:
    reminders(samples_env, "Buy milk", "Call mom")
    visitor = visit("/reminders/")
    expect(listed(visitor)).to_have_count(2)
    asked: list[str] = []

    def confirm(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    visitor.page.on("dialog", confirm)
    visitor.page.get_by_role("button", name="Delete All").click()

    expect(listed(visitor)).to_have_count(0)
    assert asked == ["Are you sure you want to delete?"]
    assert shell(samples_env, "from reminders.models import Reminder\nprint(Reminder.objects.count())") == 0


# -- components_demo -------------------------------------------------------------------------------


def component(visitor: Visitor, name: str) -> Any:
    return visitor.page.locator(f'[id="app:{name}"]')


def test_components_an_alert_rendered_from_a_shell_updates_the_open_page(
    samples_env: dict[str, str], visit: Visit
) -> None:
    # An anonymous visitor: the alert's subscription is acknowledged, the cart's refused.
    visitor = visit("/components/", subscriptions=1)
    expect(component(visitor, "AlertBroadcastComponent")).to_have_text("")

    # The home page's own instructions.
    shell(
        samples_env,
        "from app.streams import AlertBroadcastComponent\na = AlertBroadcastComponent()\n"
        "a.render(alert_class='warning', alert_content='Server restarting')",
    )

    alert = component(visitor, "AlertBroadcastComponent").locator(".alert.alert-warning")
    expect(alert).to_have_text("Server restarting")


def test_components_a_users_cart_count_rendered_from_a_shell_updates_that_users_page(
    samples_env: dict[str, str], visit: Visit
) -> None:
    username = unique("shopper").replace(" ", "-")
    # "A user must be created and logged in": a session made as django.contrib.auth.login makes it.
    user = shell(
        samples_env,
        "import json; from django.contrib.auth import get_user_model, BACKEND_SESSION_KEY, "
        "HASH_SESSION_KEY, SESSION_KEY\nfrom django.contrib.sessions.backends.db import SessionStore\n"
        f"user = get_user_model().objects.create_user({username!r})\nsession = SessionStore()\n"
        "session[SESSION_KEY] = str(user.pk)\n"
        "session[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "session[HASH_SESSION_KEY] = user.get_session_auth_hash()\nsession.create()\n"
        "print(json.dumps({'pk': user.pk, 'session': session.session_key}))",
    )
    shopper = visit("/components/", subscriptions=2, cookies=[{"name": "sessionid", "value": user["session"]}])
    anonymous = visit("/components/", subscriptions=1)
    expect(component(shopper, "CartCountComponent")).to_contain_text("99")

    shell(
        samples_env,
        "from django.contrib.auth import get_user_model\nfrom app.streams import CartCountComponent\n"
        f"user = get_user_model().objects.get(pk={user['pk']})\nc = CartCountComponent(user)\nc.render(count=25)",
    )

    expect(component(shopper, "CartCountComponent").locator(".badge")).to_contain_text("25")
    # A fence: the alert reaches both pages after anything sent before it.
    shell(samples_env, "from app.streams import AlertBroadcastComponent\nAlertBroadcastComponent().render(alert_class='info', alert_content='Fence')")
    expect(component(anonymous, "AlertBroadcastComponent")).to_contain_text("Fence")
    expect(component(anonymous, "CartCountComponent")).to_contain_text("99")


def test_components_an_anonymous_visitors_cart_renders_and_its_subscription_is_refused(visit: Visit) -> None:
    visitor = visit("/components/", subscriptions=1)  # the page answered 200 (visit asserts it)
    cart_name = visitor.page.locator("turbo-channels-stream-source").nth(1).get_attribute("signed-channel-name")
    alert_name = visitor.page.locator("turbo-channels-stream-source").nth(0).get_attribute("signed-channel-name")

    # Rendered as turbo-django rendered it: get_context()'s count, for nobody in particular.
    expect(component(visitor, "CartCountComponent")).to_contain_text("99")
    refusal = visitor.wait_for_message(
        lambda message: message.get("signed_channel_name") == cart_name and message.get("type") != "subscribed",
        "answering the cart's subscription",
    )
    assert refusal == {
        "type": "error", "error": "permission denied", "signed_channel_name": cart_name,
        "stream": "app:CartCountComponent(null)",
    }
    assert {"type": "subscribed", "signed_channel_name": alert_name} in visitor.received
    assert visitor.page.evaluate("window.__turbo.subscribed") == 1
