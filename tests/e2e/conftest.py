"""Browser fixtures: Debian's Chromium driven by Playwright's sync API (no ``playwright install``).

Playwright's sync API refuses to run inside a running asyncio loop: the browser tests are plain
sync tests. While Playwright is started, its own loop counts as running in this thread, which
changes two things in Django, so Playwright runs for the whole package, started before and
stopped after every test's database set-up and teardown:

- Django refuses ORM calls ("You cannot call this from an async context"); they really are
  synchronous here, so ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set for this package only (as Playwright's
  documentation advises).
- Django's connections are thread-local in a sync thread but context-local once a loop runs:
  starting Playwright inside a test would let its teardown miss the connections its set-up
  patched (pytest-django's "Database queries to 'other' are not allowed" in later tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 10_000

# Counts what the page's turbo-async client reports, for tests to wait on:
# subscriptions acknowledged by the server, connections opened, stream frames rendered.
INSTRUMENT = """
window.__turbo = {subscribed: 0, connected: 0, streams: 0};
document.addEventListener("turbo-async:subscribed", () => window.__turbo.subscribed++);
document.addEventListener("turbo-async:connected", () => window.__turbo.connected++);
document.addEventListener("turbo:before-stream-render", () => window.__turbo.streams++);
"""


class Chromium:
    """Playwright, started at once, and Debian's Chromium, launched when a test first opens a
    page: a missing binary then fails that test (not its set-up) with what to install."""

    def __init__(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=TIMEOUT_MS)
        self._playwright: Any = sync_playwright().start()
        self._browser: Any = None

    def get(self) -> Any:
        if self._browser is None:
            if not CHROMIUM.exists():
                pytest.fail(
                    f"No Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium). "
                    "The browser tests drive it through Playwright and never skip."
                )
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        self._playwright.stop()


@pytest.fixture(scope="package", autouse=True)
def chromium() -> Iterator[Chromium]:
    """For every test of the package, whether it opens a page or not (see the module's doc)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = Chromium()
        try:
            yield browser
        finally:
            browser.close()


OpenPage = Callable[..., Any]


@pytest.fixture
def open_page(chromium: Chromium) -> Iterator[OpenPage]:
    """``open_page(url)``: a page in its own browser context (a separate visitor, own cookies),
    loaded and subscribed. Uncaught JavaScript errors on any of them fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(url: str, viewport: dict[str, int] | None = None, subscriptions: int = 1) -> Any:
        context = chromium.get().new_context(
            viewport=viewport or {"width": 1000, "height": 720}, locale="en-US", timezone_id="UTC"
        )
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(INSTRUMENT)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.goto(url)
        wait_subscribed(page, subscriptions)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"


def wait_subscribed(page: Any, count: int, timeout: float = TIMEOUT_MS) -> None:
    """Wait until the server has acknowledged ``count`` subscriptions of this page in total."""
    page.wait_for_function(f"window.__turbo.subscribed >= {count}", timeout=timeout)


def room_url(origin: str, room: Any) -> str:
    """The demo's page of ``room`` on the server at ``origin``."""
    from django.urls import reverse

    return origin + reverse("chat:room", args=[room.pk])


def message_texts(page: Any) -> Any:
    """The demo room page's messages, as a Playwright locator."""
    return page.locator("#messages .message-text")


def database_texts(room: Any) -> list[str]:
    """The texts of the demo room's messages in the database, in their order on the page."""
    from demo.chat.models import Message

    return list(Message.objects.filter(room=room).order_by("pk").values_list("text", flat=True))
