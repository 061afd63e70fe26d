"""The browser client (turbo-async.js, turbo/head.html, turbo/turbo_stream_source.html) in Debian's
Chromium against uvicorn, and for broadcasts a Celery worker and Redis: refusals reach the page as
events, hovering a link runs nothing, and a page that forgot turbo/head.html still gets its streams.
The pages are tests/testapp/templates/testapp/client.html, served at /client/ (tests/urls.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import LOG_DIR
from tests.e2e.conftest import INSTRUMENT, TIMEOUT_MS, Chromium, wait_subscribed
from tests.services import Process, Uvicorn, free_port, subprocess_env, wait_for_port
from tests.testapp.models import Tag
from tests.testapp.streams import PrivateStream, TagListStream

pytestmark = [pytest.mark.browser, pytest.mark.integration]

TURBO_JS = "/static/turbo_async/js/turbo.es2017-umd.js"

# Records the client's refusal and error events (with where they were dispatched) and every
# WebSocket the page opens, so a test can also send on the client's own socket.
RECORD = """
(() => {
  window.__events = [];
  for (const type of ["turbo-async:refused", "turbo-async:error"]) {
    document.addEventListener(type, (event) => window.__events.push({
      type,
      detail: event.detail,
      target: event.target === document ? "document" : event.target.localName,
    }));
  }
  window.__sockets = [];
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
  };
})();
"""

# Puts a stream source element with this name on the page; what it receives is kept on it.
ADD_SOURCE = """(name) => {
  const element = document.createElement("turbo-channels-stream-source");
  element.id = "added";
  element.addEventListener("turbo-async:refused", (event) => { window.__refusedOnElement = event.detail; });
  element.setAttribute("signed-channel-name", name);
  document.body.append(element);
}"""

# Hovering a link arms Turbo 8's prefetch timer (100 ms, PREFETCH_DELAY in its source); leaving the
# link cancels it, so the pointer stays on the link under test. The fence: a timer of the same delay
# armed after the hover fires after it (so a request for the hovered link would be on its way), and
# then a second link is "entered" once prefetching is allowed; its request comes after the first's
# would have. (Firing sooner, its own prefetch request would cancel the fence's pending timer.)
HOVER_FENCE = """async () => {
  await new Promise((resolve) => setTimeout(resolve, 100));
  let meta = document.querySelector('meta[name="turbo-prefetch"]');
  if (!meta) {
    meta = document.createElement("meta");
    meta.name = "turbo-prefetch";
    document.head.append(meta);
  }
  meta.content = "true";
  document.querySelector("#fence").dispatchEvent(new MouseEvent("mouseenter"));
}"""


@dataclass
class Visit:
    """A page, with what it requested and logged since it started loading."""

    page: Any
    requests: list[Any] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)

    def requested(self, path: str) -> list[Any]:
        return [request for request in self.requests if request.url.split("?")[0].endswith(path)]

    def events(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate("window.__events"))


Visitor = Callable[..., Visit]


@pytest.fixture
def visit(chromium: Chromium) -> Iterator[Visitor]:
    """``visit(url, subscriptions=1)``: like ``open_page`` (tests/e2e/conftest.py), but recording
    requests, console messages and the client's events from the start."""
    contexts: list[Any] = []
    errors: list[str] = []

    def visit_(url: str, subscriptions: int = 1) -> Visit:
        context = chromium.get().new_context(locale="en-US", timezone_id="UTC")
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(INSTRUMENT)
        context.add_init_script(RECORD)
        page = context.new_page()
        seen = Visit(page)
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.on("request", lambda request: seen.requests.append(request))
        page.on("console", lambda message: seen.console.append((message.type, message.text)))
        page.goto(url)
        wait_subscribed(page, subscriptions)
        return seen

    yield visit_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"


def tampered(signed_name: str) -> str:
    """The signed name with its last signature character changed."""
    return signed_name[:-1] + ("B" if signed_name.endswith("A") else "A")


def test_a_tampered_signed_name_is_refused_with_the_reason(web: Uvicorn, visit: Visitor) -> None:
    seen = visit(web.origin + "/client/")
    forged = tampered(TagListStream().signed_stream_name)

    seen.page.evaluate(ADD_SOURCE, forged)

    seen.page.wait_for_function("window.__events.length > 0")
    detail = {
        "signedChannelName": forged, "stream": "testapp:TagListStream",
        "reason": "invalid signed_channel_name: bad signature",
    }
    # Dispatched on the element, and bubbled up to document.
    assert seen.events() == [{"type": "turbo-async:refused", "detail": detail, "target": "turbo-channels-stream-source"}]
    assert seen.page.evaluate("window.__refusedOnElement") == detail
    assert (
        "warning",
        "turbo-async: the subscription to testapp:TagListStream was refused: invalid signed_channel_name: bad signature",
    ) in seen.console
    assert not [text for _, text in seen.console if forged in text]  # a token tells a reader nothing


def test_a_refusal_by_the_stream_names_its_reason_and_the_socket_keeps_delivering(
    live: Uvicorn, visit: Visitor
) -> None:
    seen = visit(live.origin + "/client/")
    private = PrivateStream().signed_stream_name  # only staff may subscribe; this visitor is anonymous

    seen.page.evaluate(ADD_SOURCE, private)

    seen.page.wait_for_function("window.__events.length > 0")
    assert seen.events() == [
        {
            "type": "turbo-async:refused",
            "detail": {"signedChannelName": private, "stream": "testapp:PrivateStream", "reason": "permission denied"},
            "target": "turbo-channels-stream-source",
        }
    ]
    assert ("warning", "turbo-async: the subscription to testapp:PrivateStream was refused: permission denied") in seen.console
    Tag.objects.create(slug="after-refusal", label="Still delivered")
    expect(seen.page.locator("#tags li")).to_have_text(["Still delivered"])
    expect(seen.page.locator("html")).to_have_attribute("data-turbo-async-connected", "true")


def test_a_server_error_about_no_subscription_fires_turbo_async_error_on_document(
    web: Uvicorn, visit: Visitor
) -> None:
    seen = visit(web.origin + "/client/")

    seen.page.evaluate('window.__sockets[0].send("not json")')  # on the client's own socket

    seen.page.wait_for_function("window.__events.length > 0")
    assert seen.events() == [
        {
            "type": "turbo-async:error",
            "detail": {"signedChannelName": None, "stream": None, "reason": "message is not valid JSON"},
            "target": "document",
        }
    ]
    expect(seen.page.locator("html")).to_have_attribute("data-turbo-async-connected", "true")


@pytest.mark.parametrize("page", ["/client/", "/client/no-head/"], ids=["head", "without-head"])
def test_hovering_a_get_link_does_not_request_it(web: Uvicorn, visit: Visitor, page: str) -> None:
    seen = visit(web.origin + page)

    seen.page.hover("#remove")
    with seen.page.expect_request(lambda request: request.url.endswith("/client/fence/")) as fence:
        seen.page.evaluate(HOVER_FENCE)

    assert fence.value.headers.get("x-sec-purpose") == "prefetch"  # the fence was a hover prefetch
    assert seen.requested("/client/remove/") == []


def test_prefetch_on_hover_is_an_opt_in_of_head_html(web: Uvicorn, visit: Visitor) -> None:
    seen = visit(web.origin + "/client/?prefetch=1")

    with seen.page.expect_request(lambda request: request.url.endswith("/client/remove/")) as remove:
        seen.page.hover("#remove")

    assert remove.value.headers.get("x-sec-purpose") == "prefetch"


def test_a_page_without_head_html_loads_turbo_and_receives_broadcasts(live: Uvicorn, visit: Visitor) -> None:
    seen = visit(live.origin + "/client/no-head/")

    Tag.objects.create(slug="no-head", label="Arrived")

    expect(seen.page.locator("#tags li")).to_have_text(["Arrived"])
    assert len(seen.requested(TURBO_JS)) == 1
    # Turbo for streams only: the page's links and forms keep doing full page loads.
    assert seen.page.evaluate("Turbo.session.drive") is False
    assert any(kind == "warning" and "turbo/head.html" in text for kind, text in seen.console)


def test_head_html_and_subscribe_run_turbo_and_the_client_once_across_drive_visits(
    live: Uvicorn, visit: Visitor
) -> None:
    seen = visit(live.origin + "/client/")
    page = seen.page
    before = page.get_attribute("turbo-channels-stream-source", "signed-channel-name")
    page.evaluate("window.__session = Turbo.session")

    page.click("#next")  # a Turbo Drive visit: the new <body> runs its turbo-async.js again

    expect(page.locator("#step")).to_have_text("2")
    assert page.evaluate("Turbo.session === window.__session")  # the same page, the same Turbo
    after = page.get_attribute("turbo-channels-stream-source", "signed-channel-name")
    if after != before:  # signed in another second: the new name is subscribed on the same socket
        wait_subscribed(page, 2)
    Tag.objects.create(slug="after-visit", label="After the visit")
    expect(page.locator("#tags li")).to_have_text(["After the visit"])
    assert len(seen.requested(TURBO_JS)) == 1
    assert page.evaluate("window.__sockets.length") == 1
    assert page.locator(f'script[src="{TURBO_JS}"]').count() == 1


def test_the_client_without_turbo_fails_loudly(web: Uvicorn, visit: Visitor) -> None:
    seen = visit(web.origin + "/client/no-turbo/", subscriptions=0)

    seen.page.wait_for_function("window.__events.length > 0")
    (event,) = seen.events()
    assert event["type"] == "turbo-async:error" and event["target"] == "document"
    assert event["detail"]["signedChannelName"] is None
    assert 'add {% include "turbo/head.html" %} to <head>' in event["detail"]["reason"]
    assert ("error", f"turbo-async: {event['detail']['reason']}") in seen.console


# Feeds the client's own socket messages as the server would send them (a synthetic "message"
# event: what the client does with each is under test, not the server).
FEED = """([name, messages]) => {
  const socket = window.__sockets[window.__sockets.length - 1];
  for (const message of messages) {
    socket.dispatchEvent(new MessageEvent("message", { data: JSON.stringify({ signed_channel_name: name, ...message }) }));
  }
}"""


def appended(*texts: str) -> str:
    return "".join(
        f'<turbo-stream action="append" target="tags"><template><li>{text}</li></template></turbo-stream>'
        for text in texts
    )


def test_messages_carrying_runs_of_frames_are_applied_once_and_in_order(web: Uvicorn, visit: Visitor) -> None:
    """A message may hold the frames ``from_offset`` to ``offset`` (those that queued up on the
    server for this socket, docs/client.rst): the client applies the run once, after what it
    holds; a run that comes ahead of a missing one waits for it, as a single frame does."""
    seen = visit(web.origin + "/client/")
    seen.page.evaluate("""() => {
        window.__refreshes = [];
        document.addEventListener("turbo-async:refresh", (e) => window.__refreshes.push(e.detail.reason));
    }""")
    source = seen.page.locator("turbo-channels-stream-source")
    name = source.get_attribute("signed-channel-name")
    # Numbered after the stream's position at the render (data-epoch, data-offset).
    epoch, at = source.get_attribute("data-epoch"), int(source.get_attribute("data-offset") or "")

    def run(texts: list[str], first: int, last: int) -> dict[str, Any]:
        message: dict[str, Any] = {"data": appended(*texts), "epoch": epoch, "offset": at + last}
        if first < last:
            message["from_offset"] = at + first
        return message

    seen.page.evaluate(FEED, [name, [
        run(["1"], 1, 1),
        run(["2", "3"], 2, 3),
        run(["6", "7"], 6, 7),  # 4 and 5 not yet: held
        run(["2", "3"], 2, 3),  # a repeat: dropped
        run(["4", "5"], 4, 5),
        run(["8"], 8, 8),
    ]])
    expect(seen.page.locator("#tags li")).to_have_text(["1", "2", "3", "4", "5", "6", "7", "8"])
    assert seen.page.evaluate("window.__refreshes") == []
    # A run overlapping what was applied cannot be split (the server never sends one): a gap.
    seen.page.evaluate(FEED, [name, [run(["8", "9"], 8, 9)]])
    seen.page.wait_for_function("window.__refreshes === undefined || window.__refreshes.length > 0")


# -- a socket that cannot open, or is closed by the server, says why in the console ----------


# Counts the client's sockets that closed (this listener runs before the client's own).
COUNT_CLOSES = """
window.__closes = 0;
const CountedWebSocket = window.WebSocket;
window.WebSocket = class extends CountedWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("close", () => { window.__closes += 1; });
  }
};
"""


def first_warning(chromium: Chromium, url: str, starts: str) -> tuple[str, list[str]]:
    """Open ``url`` and return the first console warning starting with ``starts``, and all the
    page's console lines once the client has retried twice more."""
    context = chromium.get().new_context()
    try:
        context.add_init_script(COUNT_CLOSES)
        page = context.new_page()
        lines: list[str] = []
        page.on("console", lambda message: lines.append(message.text))
        with page.expect_console_message(lambda message: message.text.startswith(starts), timeout=20_000) as seen:
            page.goto(url)
        page.wait_for_function("window.__closes >= 3", timeout=20_000)
        return seen.value.text, lines
    finally:
        context.close()


@pytest.fixture
def runserver() -> Iterator[str]:
    """Django's runserver without daphne in INSTALLED_APPS: WSGI, so WebSocket requests get 404."""
    port = free_port()
    process = Process(
        "runserver",
        [sys.executable, "-m", "django", "runserver", "--noreload", "--insecure", f"127.0.0.1:{port}"],
        LOG_DIR, subprocess_env(),
    )
    process.start()
    try:
        wait_for_port(port, process=process.process, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def test_a_page_served_by_a_wsgi_server_says_it_cannot_serve_websockets(
    chromium: Chromium, runserver: str, django_db_setup: None
) -> None:
    text, lines = first_warning(chromium, runserver + "/client/", "turbo-async: the WebSocket")
    assert text == (
        f"turbo-async: the WebSocket ws://{runserver.removeprefix('http://')}/ws/ cannot open: this page "
        "was served by a WSGI server (Django's runserver without \"daphne\" in INSTALLED_APPS, gunicorn "
        "or uWSGI without an ASGI worker), which answers WebSocket requests with 404. Put \"daphne\" first "
        "in INSTALLED_APPS for runserver, or serve the ASGI application (uvicorn proj.asgi:application)."
    )
    assert len([line for line in lines if line.startswith("turbo-async:")]) == 1, lines  # once, not per retry


@pytest.fixture
def uvicorn_without_websockets(django_db_setup: None) -> Iterator[Uvicorn]:
    """uvicorn with no WebSocket implementation (as plain ``pip install uvicorn``): 404 on /ws/."""
    server = Uvicorn(LOG_DIR, name="web-no-ws")
    server.args[server.args.index("websockets")] = "none"
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_failed_handshake_explains_404_and_403(chromium: Chromium, uvicorn_without_websockets: Uvicorn) -> None:
    server = uvicorn_without_websockets
    text, lines = first_warning(chromium, server.origin + "/client/", "turbo-async: the WebSocket")
    assert text.startswith(
        f"turbo-async: the WebSocket handshake with {server.ws_url} failed; retrying with backoff. "
        "The browser's own message gives the HTTP status. 404: nothing serves WebSockets at /ws/: a WSGI "
        "server (runserver without \"daphne\"), uvicorn without a WebSocket library (pip install "
        "\"uvicorn[standard]\"), or an ASGI application whose \"websocket\" route lacks "
        "turbo_async.routing.websocket_urlpatterns. 403: the server refused the handshake; its log says "
        "why. Usual causes: the page's origin is not allowed (ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS), or "
        "the channel layer (Redis) is down."
    ), text
    assert any("404" in line for line in lines if not line.startswith("turbo-async:")), lines  # Chromium's own
    assert len([line for line in lines if line.startswith("turbo-async:")]) == 1, lines


@pytest.fixture
def web_without_layer(django_db_setup: None) -> Iterator[Uvicorn]:
    """uvicorn whose channel layer's Redis does not run (nothing listens on its port)."""
    server = Uvicorn(
        LOG_DIR, name="web-no-layer", TURBO_TEST_LAYER_REDIS_PORT=str(free_port()),
        TURBO_TEST_TURBO_ASYNC=json.dumps({"LAYER_WAIT_TIMEOUT": 0.5}),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_server_whose_channel_layer_is_down_closes_with_a_reason_the_page_shows(
    chromium: Chromium, web_without_layer: Uvicorn
) -> None:
    text, _ = first_warning(chromium, web_without_layer.origin + "/client/", "turbo-async: the server closed")
    assert text == (
        "turbo-async: the server closed the WebSocket (1011: the server's channel layer (Redis) is "
        "unreachable; see the server log); reconnecting"
    )
    assert "the channel layer could not open a channel for it" in web_without_layer.log()
