"""Browser fixtures: Debian's Chromium driven by Playwright's sync API (no ``playwright install``).

Playwright's sync API refuses to run inside a running asyncio loop: the browser tests are plain
sync tests. While Playwright is started its own loop counts as running in this thread, and Django
would refuse ORM calls ("You cannot call this from an async context"); they are really synchronous
here, so ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set for this package only (as Playwright's docs advise).
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


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"No Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium). "
            "The browser tests drive it through Playwright and never skip."
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


OpenPage = Callable[..., Any]


@pytest.fixture
def open_page(browser: Any) -> Iterator[OpenPage]:
    """``open_page(url)``: a page in its own browser context (a separate visitor, own cookies),
    loaded and subscribed. Uncaught JavaScript errors on any of them fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(url: str, viewport: dict[str, int] | None = None, subscriptions: int = 1) -> Any:
        context = browser.new_context(
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
