"""Pages that repair themselves (docs/guarantees.rst, "Delivery to the page"), in Debian's Chromium
against real processes of their own (tests/integration/test_page_recovery.py's stack): after each
fault the page's DOM shows what the database holds, within the stated bound."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OpenPage, database_texts, message_texts, room_url as page_url, wait_subscribed
from tests.factories import MessageFactory, RoomFactory
from tests.integration.test_page_recovery import HEARTBEAT, RECOVERY_BOUND, RecoveryStack
from tests.services import publishing_to, stream_offset, wait_offset
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.layer]

BOUND_MS = int(RECOVERY_BOUND * 1000)


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecoveryStack]:
    services = RecoveryStack(tmp_path_factory.mktemp("page-recovery"), "page-recovery")
    with services.serving():
        yield services


@pytest.fixture
def live_stack(stack: RecoveryStack, transactional_db: None) -> Iterator[RecoveryStack]:
    try:
        with publishing_to(stack.broker.url):
            yield stack
    finally:
        if stack.layer.process is None:
            stack.layer.start()
        web = stack.web.process
        if web is not None and web.poll() is None:
            os.killpg(web.pid, signal.SIGCONT)


def room_url(stack: RecoveryStack, room: Any) -> str:
    return page_url(stack.web.origin, room)


def texts(page: Any) -> Any:
    return message_texts(page)


STALL_SECONDS = 3.0


@pytest.mark.parametrize("fault", ["restart", "flushall", "stall"])
def test_a_page_shows_the_database_after_a_layer_fault(
    live_stack: RecoveryStack, open_page: OpenPage, fault: str
) -> None:
    """The channel-layer Redis restarted (no append-only file) or flushed, or the web process
    frozen for STALL_SECONDS, while 10 messages are saved: the page, without a reload from the
    test, shows exactly the room's messages in the database within RECOVERY_BOUND of the fault's
    end (frames it missed come from the history or a Turbo refresh)."""
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(live_stack, room))
    MessageFactory(room=room, text="before")
    expect(texts(page)).to_have_text(["before"])
    web = live_stack.web.process
    assert web is not None
    if fault == "restart":
        live_stack.restart_layer()
    elif fault == "flushall":
        live_stack.layer.flushall()
    else:
        os.killpg(web.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for n in range(10):
            MessageFactory(room=room, text=f"during {fault} {n}")
        if fault == "stall":
            time.sleep(max(0.0, STALL_SECONDS - (time.monotonic() - stopped)))
    finally:
        if fault == "stall":
            os.killpg(web.pid, signal.SIGCONT)
    start = time.monotonic()
    MessageFactory(room=room, text="after")
    expected = database_texts(room)
    expect(texts(page)).to_have_text(expected, timeout=BOUND_MS)
    print(f"\n{fault}: the page equals the database {time.monotonic() - start:.2f} s after the fault ended")


def test_a_page_whose_server_goes_silent_reconnects_on_its_own(live_stack: RecoveryStack, open_page: OpenPage) -> None:
    """A stalled server (SIGSTOP: the TCP connection stays open, nothing arrives) looks like a
    half-open socket to the page; after 2.5 heartbeats without a message it opens a new one."""
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(live_stack, room))
    page.wait_for_function("window.__turbo.connected >= 1")
    page.evaluate("""() => {
        window.__stale = [];
        document.addEventListener("turbo-async:disconnected", (e) => window.__stale.push(e.detail.reason));
        window.__pinged = 0;
        document.addEventListener("turbo-async:ping", () => window.__pinged++);
    }""")
    page.wait_for_function("window.__pinged >= 1", timeout=int(3 * HEARTBEAT * 1000) + 2000)
    web = live_stack.web.process
    assert web is not None
    os.killpg(web.pid, signal.SIGSTOP)
    try:
        page.wait_for_function(
            "window.__stale.includes('heartbeat timeout')", timeout=int(4 * HEARTBEAT * 1000) + 2000
        )
    finally:
        os.killpg(web.pid, signal.SIGCONT)
    wait_subscribed(page, 2, timeout=BOUND_MS)
    MessageFactory(room=room, text="after the stall")
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)


MAX_AGE = 3

@pytest.fixture(scope="module")
def expiring_stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecoveryStack]:
    services = RecoveryStack(tmp_path_factory.mktemp("expiring"), "expiring", SIGNATURE_MAX_AGE=MAX_AGE)
    with services.serving():
        yield services


def test_a_page_whose_signature_expired_refreshes_itself_and_updates_again(
    expiring_stack: RecoveryStack, transactional_db: None, open_page: OpenPage
) -> None:
    with publishing_to(expiring_stack.broker.url):
        _expired_signature_refreshes(expiring_stack, open_page)


def _expired_signature_refreshes(expiring_stack: RecoveryStack, open_page: OpenPage) -> None:
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(expiring_stack, room))
    source = page.locator("turbo-channels-stream-source")
    old_name = source.get_attribute("signed-channel-name")
    page.evaluate("""() => {
        window.__refreshes = [];
        document.addEventListener("turbo-async:refresh", (e) => window.__refreshes.push(e.detail.reason));
    }""")
    time.sleep(MAX_AGE + 1)
    # A reconnect (here after a stalled server) resubscribes with the page's old signature.
    web = expiring_stack.web.process
    assert web is not None
    os.killpg(web.pid, signal.SIGSTOP)
    try:
        page.wait_for_function("document.documentElement.dataset.turboAsyncConnected === 'false'",
                               timeout=int(4 * HEARTBEAT * 1000) + 2000)
    finally:
        os.killpg(web.pid, signal.SIGCONT)
    page.wait_for_function("window.__refreshes && window.__refreshes.includes('signature_expired')", timeout=BOUND_MS)
    expect(source).not_to_have_attribute("signed-channel-name", old_name or "", timeout=BOUND_MS)
    wait_subscribed(page, 2, timeout=BOUND_MS)
    MessageFactory(room=room, text="after the refresh")
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)


def offline_while(stack: RecoveryStack, room: Any, texts_: list[str]) -> None:
    """Stop the web process (the page's socket closes), save messages meanwhile (the worker
    numbers them and keeps them in the history), and start it again on the same port."""
    from django.conf import settings
    from django.test import override_settings

    stack.web.stop()
    try:
        before = _offset(stack, room)
        # One task, so one offset, per save: the outbox would otherwise batch saves that queue
        # up, and the count of missed offsets is what these tests are about.
        with override_settings(TURBO_ASYNC={**getattr(settings, "TURBO_ASYNC", {}), "BATCH_MAX_SIZE": 1}):
            for text in texts_:
                MessageFactory(room=room, text=text)
            wait_offset(stack.layer, room, before + len(texts_))
    finally:
        stack.web.start()  # a failure here must not leave the next test without a server


def _offset(stack: RecoveryStack, room: Any) -> int:
    return stream_offset(stack.layer, room)


def test_a_page_offline_while_messages_were_created_catches_up_without_a_refresh(
    live_stack: RecoveryStack, open_page: OpenPage
) -> None:
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(live_stack, room))
    page.evaluate("""() => {
        window.__notRefreshed = true;
        window.__refreshes = [];
        document.addEventListener("turbo-async:refresh", (e) => window.__refreshes.push(e.detail.reason));
    }""")
    MessageFactory(room=room, text="seen")
    expect(texts(page)).to_have_text(["seen"])
    offline_while(live_stack, room, ["missed 1", "missed 2", "missed 3"])
    start = time.monotonic()
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)
    print(f"\nweb restart, 3 missed: the page shows the database again after {time.monotonic() - start:.2f} s")
    # Replayed from the history, not refreshed.
    assert page.evaluate("window.__refreshes") == []
    MessageFactory(room=room, text="live again")
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)


def test_a_page_that_missed_more_than_the_history_refreshes_and_shows_the_database(
    live_stack: RecoveryStack, open_page: OpenPage
) -> None:
    from tests.integration.test_page_recovery import HISTORY_SIZE

    with suppress():
        room = RoomFactory()
    page = open_page(room_url(live_stack, room))
    page.evaluate("""() => {
        window.__refreshes = [];
        document.addEventListener("turbo-async:refresh", (e) => window.__refreshes.push(e.detail.reason));
    }""")
    MessageFactory(room=room, text="seen")
    expect(texts(page)).to_have_text(["seen"])
    offline_while(live_stack, room, [f"missed {n}" for n in range(HISTORY_SIZE + 2)])
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)
    assert page.evaluate("window.__refreshes") == ["gap"]
    MessageFactory(room=room, text="live again")
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)


def number_a_batch_nobody_gets(stack: RecoveryStack, room: Any, data: str, forget_it: bool) -> None:
    """What a worker stopped between the history's script and ``group_send`` leaves (or a capacity
    drop, or a Redis fault on the way): ``data`` numbered in the stream's history, sent to no web
    process. ``forget_it``: its history entry is then deleted too (trimmed, or lost with Redis), so
    that nothing can give it back."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from channels_redis.core import RedisChannelLayer

    from turbo_async import history

    group = room.stream.broadcastable_stream_name

    async def number() -> None:
        layer = RedisChannelLayer(hosts=[{"address": stack.layer.url, "socket_timeout": None}])
        position = await history.append(layer, group, data)
        assert position is not None
        if forget_it:
            await history.client(layer, group).xdel(history.history_key(group), f"{position.offset}-0")
        await layer.close_pools()

    # On a thread of its own: Playwright's loop runs in this one.
    with ThreadPoolExecutor(1) as helper:
        helper.submit(asyncio.run, number()).result()


def a_page_that_saw_one_message(stack: RecoveryStack, open_page: OpenPage) -> tuple[Any, Any]:
    """A new room's page, counting its refreshes (``window.__refreshes``), after one live frame."""
    with suppress():
        room = RoomFactory()
    page = open_page(room_url(stack, room))
    page.evaluate("""() => {
        window.__refreshes = [];
        document.addEventListener("turbo-async:refresh", (e) => window.__refreshes.push(e.detail.reason));
    }""")
    MessageFactory(room=room, text="seen")
    expect(texts(page)).to_have_text(["seen"])
    return room, page


def test_a_batch_numbered_but_never_sent_reaches_the_page_from_the_history_without_a_refresh(
    live_stack: RecoveryStack, open_page: OpenPage
) -> None:
    """A worker stopped between numbering a batch and sending it: the next live frame's offset
    jumps, and the web process, which received that frame but not the one before it, hands the
    page the missing one from the history (``FanOut.fill``, after 0.5 s): the page shows both, in
    order, and does not refresh."""
    from django.template.loader import render_to_string

    from demo.chat.models import Message
    from turbo_async.frames import frame_markup

    room, page = a_page_that_saw_one_message(live_stack, open_page)
    with suppress():
        lost = MessageFactory(room=room, text="its worker was stopped")
    message = Message.objects.get(pk=lost.pk)
    markup = frame_markup("append", target="messages", html=render_to_string("chat/message.html", {"message": message}))
    number_a_batch_nobody_gets(live_stack, room, str(markup), forget_it=False)
    MessageFactory(room=room, text="next")
    expect(texts(page)).to_have_text(["seen", "its worker was stopped", "next"], timeout=BOUND_MS)
    assert texts(page).all_inner_texts() == database_texts(room)
    assert page.evaluate("window.__refreshes") == []


def test_a_frame_lost_on_the_way_and_from_the_history_makes_the_page_refresh_and_show_the_database(
    live_stack: RecoveryStack, open_page: OpenPage
) -> None:
    """A batch numbered but never delivered, and gone from the history too (trimmed, or lost with
    a Redis fault): the next live frame's offset jumps, the web process finds nothing to fill the
    hole with, and the client, which held that frame for the missing one, refreshes."""
    room, page = a_page_that_saw_one_message(live_stack, open_page)
    with suppress():
        MessageFactory(room=room, text="its frame was lost")
    number_a_batch_nobody_gets(live_stack, room, "<lost/>", forget_it=True)
    MessageFactory(room=room, text="next")
    expect(texts(page)).to_have_text(database_texts(room), timeout=BOUND_MS)
    assert page.evaluate("window.__refreshes") == ["gap"]
