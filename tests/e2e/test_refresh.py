"""Turbo 8 refreshes in Debian's Chromium: request ids and morphing, through the real pipeline.

Two visitors have the demo's room list open. One posts a message with Turbo's own ``fetch`` (it
sends ``X-Turbo-Request-Id`` and remembers the id); the request's change reaches a worker with the
id, and the debounced ``refresh`` frame carries it. The other page refreshes by morphing (the
room's count changes in place); the page that made the change receives the same frame and ignores
it (Turbo's recent request ids).

The web process runs the test settings plus ``TurboRequestIdMiddleware`` (a settings module
written for this test into the run's temporary directory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from demo.chat.models import Message
from tests.conftest import LOG_DIR
from tests.e2e.conftest import OpenPage
from tests.factories import RoomFactory
from tests.services import ROOT, CeleryWorker, RedisServer, Uvicorn
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MIDDLEWARE = "turbo_async.middleware.TurboRequestIdMiddleware"

# What each page did: refresh visits started, morphs rendered, stream actions received.
WATCH = """
window.__refresh = {visits: 0, morphs: 0, actions: []};
document.addEventListener("turbo:visit", () => window.__refresh.visits++);
document.addEventListener("turbo:morph", () => window.__refresh.morphs++);
document.addEventListener("turbo:before-stream-render",
  (event) => window.__refresh.actions.push(event.target.getAttribute("action")));
"""

# Post a message the way a Turbo app's own code would: Turbo.fetch adds X-Turbo-Request-Id.
POST_WITH_TURBO_FETCH = """
async ([url, text]) => {
  const body = new FormData();
  body.append("csrfmiddlewaretoken", document.querySelector('meta[name="csrf-token"]').content);
  body.append("author", "Ada");
  body.append("text", text);
  const response = await Turbo.fetch(url, {method: "POST", body, redirect: "manual"});
  return response.type === "opaqueredirect" || response.ok;
}
"""


@pytest.fixture(scope="module")
def web_with_request_ids(redis_server: RedisServer, django_db_setup: None) -> Iterator[Uvicorn]:
    directory = Path(os.environ["TURBO_TEST_TMP"]) / "request_id_settings"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "request_id_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        f"MIDDLEWARE = [*MIDDLEWARE, {MIDDLEWARE!r}]  # noqa: F405\n"
    )
    server = Uvicorn(
        LOG_DIR, name="web-request-ids", DJANGO_SETTINGS_MODULE="request_id_settings",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(directory), os.environ.get("PYTHONPATH", "")]),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def site(
    live_broker: RedisServer, worker: CeleryWorker, web_with_request_ids: Uvicorn, transactional_db: None
) -> Uvicorn:
    return web_with_request_ids


def watched(page: Any) -> Any:
    page.evaluate(WATCH)
    return page


def test_the_page_that_made_the_change_ignores_the_refresh_and_the_other_morphs(
    site: Uvicorn, open_page: OpenPage
) -> None:
    with suppress():
        room = RoomFactory(name="General")
    url = site.origin + reverse("chat:room_list")
    actor, other = watched(open_page(url)), watched(open_page(url))
    count = f"#room-{room.pk}-count"
    expect(actor.locator(count)).to_have_text("0 messages")
    expect(other.locator(count)).to_have_text("0 messages")

    posted = actor.evaluate(POST_WITH_TURBO_FETCH, [reverse("chat:message_create", args=[room.pk]), "Hello"])
    assert posted
    assert Message.objects.filter(room=room, text="Hello").exists()

    # The other page refreshes by morphing: the count changes in place.
    expect(other.locator(count)).to_have_text("1 message")
    assert other.evaluate("window.__refresh.morphs") >= 1
    assert other.evaluate("window.__refresh.actions").count("refresh") == 1
    # The acting page got the same frame (the same group, one socket each) and ignored it.
    actor.wait_for_function("window.__refresh.actions.includes('refresh')")
    assert actor.evaluate("window.__refresh") == {"visits": 0, "morphs": 0, "actions": ["refresh"]}
    expect(actor.locator(count)).to_have_text("0 messages")
    # The morph kept the other page's subscription: it still receives frames.
    assert other.evaluate("window.__turbo.subscribed") >= 1


def test_without_a_request_id_every_page_refreshes(site: Uvicorn, open_page: OpenPage) -> None:
    """The control: a change made without Turbo's header (a plain POST) refreshes both pages."""
    with suppress():
        room = RoomFactory(name="Random")
    url = site.origin + reverse("chat:room_list")
    first, second = watched(open_page(url)), watched(open_page(url))
    count = f"#room-{room.pk}-count"

    posted = first.evaluate(
        POST_WITH_TURBO_FETCH.replace("Turbo.fetch", "window.fetch"),
        [reverse("chat:message_create", args=[room.pk]), "Plain"],
    )
    assert posted
    expect(first.locator(count)).to_have_text("1 message")
    expect(second.locator(count)).to_have_text("1 message")
