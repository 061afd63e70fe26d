"""A page's first subscription in Chromium (issue 12): a message saved after the room page was
rendered but before its client connected shows up on the page, from the replay the rendered
position asks for, without a reload. Real pipeline: uvicorn, a Celery worker, Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from tests.e2e.conftest import INSTRUMENT, TIMEOUT_MS, Chromium, wait_subscribed
from tests.factories import MessageFactory, RoomFactory
from tests.services import RedisServer, Uvicorn, stream_offset
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_a_message_saved_before_the_page_connects_is_shown(
    live: Uvicorn, redis_server: RedisServer, chromium: Chromium
) -> None:
    with suppress():
        room = RoomFactory()
    context = chromium.get().new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(INSTRUMENT)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Hold the client's script: the page is rendered, its socket not yet open.
        held: list[Any] = []
        holding = [True]

        def hold(route: Any) -> None:
            if holding[0]:
                held.append(route)
            else:
                route.continue_()

        page.route("**/turbo-async.js", hold)
        page.goto(live.origin + reverse("chat:room", args=[room.pk]), wait_until="commit")
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not held:
            assert time.monotonic() < deadline, "the page never asked for turbo-async.js"
            page.wait_for_timeout(20)
        rendered = int(page.get_attribute("turbo-channels-stream-source", "data-offset") or -1)
        assert rendered == stream_offset(redis_server, room)

        MessageFactory(room=room, text="Sent while the page was loading")
        while stream_offset(redis_server, room) <= rendered:  # the worker has sent it: no socket got it
            assert time.monotonic() < deadline + 10, "the worker never numbered the message's frame"
            time.sleep(0.05)
        assert page.locator("#messages .message-text").count() == 0  # the render predates it

        holding[0] = False
        for route in held:
            route.continue_()
        wait_subscribed(page, 1)
        expect(page.locator("#messages .message-text")).to_have_text(["Sent while the page was loading"])
        assert page.evaluate("window.__turbo.streams") == 1 and page.evaluate("window.__turbo.connected") == 1
        assert not errors, errors
    finally:
        context.close()
