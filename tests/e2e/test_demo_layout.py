"""The demo's layout in Debian's Chromium at a phone's width (390 px) and a laptop's (1280 px):
the room list's message counts line up at the end of their rows, and the message box keeps room
for its placeholder. Each test takes the screenshot docs/demo.rst shows (written to docs/_static
only with TURBO_UPDATE_SCREENSHOTS=1, so that a test run leaves the working tree clean)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from tests.e2e.conftest import OpenPage
from tests.factories import MessageFactory, RoomFactory
from tests.services import Uvicorn
from turbo_async import suppress

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "_static"
    if os.environ.get("TURBO_UPDATE_SCREENSHOTS") == "1"
    else Path(os.environ["TURBO_TEST_TMP"])
)
WIDTHS = [390, 1280]


def screenshot(page: Any, name: str) -> None:
    page.locator("body").click(position={"x": 2, "y": 2})  # no focus ring or caret in the image
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), animations="disabled")
    assert path.stat().st_size > 5_000


def no_horizontal_scroll(page: Any, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_the_room_lists_message_counts_line_up_at_the_end_of_their_rows(
    web: Uvicorn, open_page: OpenPage, transactional_db: None, width: int
) -> None:
    with suppress():
        rooms = [RoomFactory(name=name) for name in ("General", "Release planning and retrospectives", "Help")]
        for room, count in zip(rooms, (12, 1, 0), strict=True):
            MessageFactory.create_batch(count, room=room)
    page = open_page(web.origin + reverse("chat:room_list"), {"width": width, "height": 640})
    expect(page.locator(f"#room-{rooms[0].pk}-count")).to_have_text("12 messages")
    counts = [page.locator(f"#room-{room.pk}-count").bounding_box() for room in rooms]
    rows = [page.locator(f"#room-{room.pk} a").bounding_box() for room in rooms]
    rights = [count["x"] + count["width"] for count in counts]
    assert max(rights) - min(rights) < 1, rights  # one right edge for every count
    for count, row in zip(counts, rows, strict=True):
        # At the end of the row, before the arrow (about 30 px), not in the middle of the row.
        assert row["x"] + row["width"] - (count["x"] + count["width"]) < 48, (count, row)
        assert count["y"] >= row["y"] and count["y"] + count["height"] <= row["y"] + row["height"]
    no_horizontal_scroll(page, width)
    screenshot(page, f"demo-rooms-{width}.png")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_message_box_keeps_room_for_its_placeholder(
    web: Uvicorn, open_page: OpenPage, transactional_db: None, width: int
) -> None:
    with suppress():
        room = RoomFactory(name="general")
        MessageFactory(room=room, author="Ada", text="Is the release still on for today?")
        MessageFactory(room=room, author="Grace", text="Yes, tagging it after lunch.")
    page = open_page(web.origin + reverse("chat:room", args=[room.pk]), {"width": width, "height": 640})
    text = page.locator("#new-message input[name=text]")
    author = page.locator("#new-message input[name=author]")
    expect(text).to_be_visible()
    # The placeholder's width in the field's own font, plus the field's padding and border.
    needed = text.evaluate(
        """(input) => {
          const style = getComputedStyle(input);
          const context = document.createElement("canvas").getContext("2d");
          context.font = style.font;
          return context.measureText(input.placeholder).width + parseFloat(style.paddingLeft)
            + parseFloat(style.paddingRight) + parseFloat(style.borderLeftWidth) + parseFloat(style.borderRightWidth);
        }"""
    )
    box, name = text.bounding_box(), author.bounding_box()
    assert box["width"] >= needed, (box, needed)
    assert box["width"] >= name["width"] or box["y"] > name["y"], (box, name)  # wider, or on a row of its own
    send = page.locator("#new-message button[type=submit]").bounding_box()
    assert send["x"] + send["width"] <= width  # the button is on screen
    no_horizontal_scroll(page, width)
    screenshot(page, f"demo-room-{width}.png")
