"""The demo chat in Debian's Chromium against the real pipeline: uvicorn serving tests.asgi, a
Celery worker process, Redis as broker and channel layer. Every DOM change a test waits for is
made by a ``<turbo-stream>`` that a worker rendered and the page received over its WebSocket."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from demo.chat.models import Message
from tests.conftest import LOG_DIR
from tests.e2e.conftest import OpenPage, wait_subscribed
from tests.factories import MessageFactory, RoomFactory
from tests.services import CeleryWorker, RedisServer, Uvicorn, free_port
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# The docs show this screenshot; a run writes it there only when asked (TURBO_UPDATE_SCREENSHOTS=1),
# so that running the tests leaves the working tree clean.
SCREENSHOT = (
    Path(__file__).resolve().parents[2] / "docs" / "_static"
    if os.environ.get("TURBO_UPDATE_SCREENSHOTS") == "1"
    else Path(os.environ["TURBO_TEST_TMP"])
) / "demo.png"


def room_url(server: Uvicorn, room: Any) -> str:
    return server.origin + reverse("chat:room", args=[room.pk])


def restartable(port: int) -> Uvicorn:
    # Not the browser fixture's DJANGO_ALLOW_ASYNC_UNSAFE: the server must keep Django's checks.
    return Uvicorn(LOG_DIR, name="web-restart", port=port, DJANGO_ALLOW_ASYNC_UNSAFE="")


def send(page: Any, text: str) -> None:
    composer = page.locator("#new-message input[name=text]")
    composer.fill(text)
    composer.press("Enter")


def message_texts(page: Any) -> Any:
    return page.locator("#messages .message-text")


def test_a_message_sent_in_one_page_appears_in_the_other_without_reload(live: Uvicorn, open_page: OpenPage) -> None:
    room = RoomFactory()
    sender, reader = open_page(room_url(live, room)), open_page(room_url(live, room))
    reader.evaluate("window.__notReloaded = true")

    send(sender, "Hello from the first page")

    expect(message_texts(reader)).to_have_text(["Hello from the first page"])
    assert reader.evaluate("window.__notReloaded") is True
    # The sender's copy comes from the stream as well, and its form was cleared by the frame.
    expect(message_texts(sender)).to_have_text(["Hello from the first page"])
    expect(sender.locator("#new-message input[name=text]")).to_have_value("")


def test_a_message_shows_the_name_its_sender_typed_once(live: Uvicorn, open_page: OpenPage) -> None:
    room = RoomFactory()
    sender, reader = open_page(room_url(live, room)), open_page(room_url(live, room))

    sender.locator("#new-message input[name=author]").fill("Ada")
    send(sender, "First")
    expect(reader.locator("#messages .message-author")).to_have_text(["Ada"])
    # The POST's answer replaces the form (text emptied): typing before it lands would be lost.
    expect(sender.locator("#new-message input[name=text]")).to_have_value("")
    # The frame came back with the name filled in: the session remembers it.
    expect(sender.locator("#new-message input[name=author]")).to_have_value("Ada")
    send(sender, "Second")

    expect(reader.locator("#messages .message-author")).to_have_text(["Ada", "Ada"])
    expect(message_texts(reader)).to_have_text(["First", "Second"])
    assert list(Message.objects.values_list("author", flat=True)) == ["Ada", "Ada"]


def test_the_edit_field_fits_the_message(live: Uvicorn, open_page: OpenPage) -> None:
    with suppress():
        short = MessageFactory(text="Hi")
        long = MessageFactory(room=short.room, text="\n".join(f"Line {n} of a longer message" for n in range(1, 7)))
    page = open_page(room_url(live, short.room))

    def field_box(message: Any) -> dict[str, float]:
        page.locator(f"#message-{message.pk} a", has_text="Edit").click()
        field = page.locator(f"#message-{message.pk}-text")
        expect(field).to_be_visible()
        box: dict[str, float] = field.evaluate(
            "f => ({height: f.clientHeight, scroll: f.scrollHeight, width: f.offsetWidth,"
            " room: document.getElementById('messages').clientWidth,"
            " line: parseFloat(getComputedStyle(f).lineHeight)})"
        )
        return box

    one_line, six_lines = field_box(short), field_box(long)
    for box in (one_line, six_lines):
        assert box["scroll"] <= box["height"], box  # all of the text shows, no scrolling inside
        assert box["width"] >= box["room"] * 0.8, box  # as wide as the room, not the short bubble
    assert one_line["height"] < 2 * one_line["line"], one_line  # one line, not a default block
    assert six_lines["height"] >= 6 * six_lines["line"], six_lines

    # It grows as the text does.
    field = page.locator(f"#message-{short.pk}-text")
    field.fill("Hi\nthere\nagain")
    grown = field.evaluate("f => ({height: f.clientHeight, scroll: f.scrollHeight})")
    assert grown["scroll"] <= grown["height"] and grown["height"] > one_line["height"], grown


def test_an_edit_in_one_page_replaces_the_message_in_the_other(live: Uvicorn, open_page: OpenPage) -> None:
    with suppress():
        message = MessageFactory(text="Helo")
    url = room_url(live, message.room)
    editor, reader = open_page(url), open_page(url)

    editor.locator(f"#message-{message.pk} a", has_text="Edit").click()
    field = editor.locator(f"#message-{message.pk}-text")  # the inline form, in the message's frame
    expect(field).to_have_value("Helo")
    field.fill("Hello")
    editor.get_by_role("button", name="Save").click()

    expect(reader.locator(f"#message-{message.pk} .message-text")).to_have_text("Hello")
    expect(editor.locator(f"#message-{message.pk} .message-text")).to_have_text("Hello")
    expect(editor.locator(f"#message-{message.pk}-text")).to_have_count(0)


def test_a_delete_in_one_page_removes_the_message_from_the_other(live: Uvicorn, open_page: OpenPage) -> None:
    with suppress():
        message = MessageFactory(text="Delete me")
        kept = MessageFactory(room=message.room, text="Keep me")
    url = room_url(live, message.room)
    deleter, reader = open_page(url), open_page(url)
    expect(message_texts(reader)).to_have_text(["Delete me", "Keep me"])
    questions: list[str] = []

    def answer_yes(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    deleter.on("dialog", answer_yes)
    deleter.locator(f"#message-{message.pk}").get_by_role("button", name="Delete").click()

    expect(reader.locator(f"#message-{message.pk}")).to_have_count(0)
    expect(deleter.locator(f"#message-{message.pk}")).to_have_count(0)
    expect(reader.locator(f"#message-{kept.pk}")).to_be_visible()
    assert questions == [f"Delete this message from {message.author}?"]


def test_a_delete_the_reader_does_not_confirm_sends_nothing(live: Uvicorn, open_page: OpenPage) -> None:
    with suppress():
        message = MessageFactory(text="Keep me after all", author="Ada")
    url = room_url(live, message.room)
    page = open_page(url)
    questions: list[str] = []
    posts: list[str] = []

    def answer_no(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", answer_no)
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.locator(f"#message-{message.pk}").get_by_role("button", name="Delete").click()
    # A fence: this page's next POST and its stream frame come after the delete's would have.
    send(page, "Still here?")
    expect(message_texts(page)).to_have_text(["Keep me after all", "Still here?"])

    assert questions == ["Delete this message from Ada?"]
    assert [post for post in posts if "/delete/" in post] == []
    assert Message.objects.filter(pk=message.pk).exists()


def test_a_room_created_in_one_page_appears_in_the_other_room_list(live: Uvicorn, open_page: OpenPage) -> None:
    with suppress():
        RoomFactory(name="General")
    url = live.origin + reverse("chat:room_list")
    creator, reader = open_page(url), open_page(url)

    creator.locator("#new-room input[name=name]").fill("Design")
    creator.get_by_role("button", name="Create room").click()

    expect(reader.locator("#rooms .room-name")).to_have_text(["General", "Design"])
    expect(creator.locator("#rooms .room-name")).to_have_text(["General", "Design"])
    expect(creator.locator("#new-room input[name=name]")).to_have_value("")


def test_a_page_on_another_room_receives_nothing(live: Uvicorn, open_page: OpenPage) -> None:
    here, elsewhere = RoomFactory(), RoomFactory()
    page_here, page_elsewhere = open_page(room_url(live, here)), open_page(room_url(live, elsewhere))

    send(page_here, "Only for this room")
    expect(message_texts(page_here)).to_have_text(["Only for this room"])
    # A fence: the other room's own message reaches its page after anything sent before it
    # (one worker, one socket), so once it is there, a stray frame would be too.
    send(page_elsewhere, "For the other room")

    expect(message_texts(page_elsewhere)).to_have_text(["For the other room"])
    assert page_elsewhere.evaluate("window.__turbo.streams") == 1


def test_the_page_reconnects_after_the_server_restarts_and_still_receives(
    live_broker: RedisServer, worker: CeleryWorker, transactional_db: None, open_page: OpenPage
) -> None:
    port = free_port()
    server = restartable(port)
    server.start()
    try:
        room = RoomFactory()
        page = open_page(room_url(server, room))
        html = page.locator("html")
        expect(html).to_have_attribute("data-turbo-async-connected", "true")

        server.stop()
        expect(html).to_have_attribute("data-turbo-async-connected", "false")
        server = restartable(port)  # a new process on the same port
        server.start()

        # The client retries with backoff (0.5 s doubling, capped at 10 s) and subscribes again.
        wait_subscribed(page, 2, timeout=30_000)
        assert page.evaluate("window.__turbo.connected") == 2
        send(page, "After the restart")
        expect(message_texts(page)).to_have_text(["After the restart"])
    finally:
        server.stop()


def test_screenshot_of_the_demo_room_for_the_readme(live: Uvicorn, open_page: OpenPage) -> None:
    conversation = [
        ("Ada", "Morning! Is the release still on for today?"),
        ("Grace", "Yes, the build is green. Tagging it after lunch."),
        ("Ada", "Nice. Flower shows every broadcast as chat.MessageStream.on_save, handy for the demo."),
        ("Grace", "Edits and deletes show up in every open window, no reload needed."),
    ]
    with suppress():
        room = RoomFactory(name="general")
        for minute, (author, text) in enumerate(conversation):
            message = MessageFactory(room=room, author=author, text=text)
            # Fixed times: the same picture on every run, so the file only changes with the UI.
            Message.objects.filter(pk=message.pk).update(
                created_at=datetime.datetime(2025, 3, 14, 9, 12 + 2 * minute, tzinfo=datetime.UTC)
            )
    page = open_page(room_url(live, room), {"width": 960, "height": 640})
    expect(message_texts(page)).to_have_text([text for _, text in conversation])
    expect(page.locator("#messages .message-author")).to_have_text([author for author, _ in conversation])
    expect(page.locator("html")).to_have_attribute("data-turbo-async-connected", "true")
    page.locator("#new-message input[name=author]").fill("Ada")
    page.locator("#new-message input[name=text]").fill("Looks great")
    page.locator("body").click(position={"x": 5, "y": 5})  # no focus ring, caret or hover in the image
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), animations="disabled")
    assert SCREENSHOT.stat().st_size > 10_000
