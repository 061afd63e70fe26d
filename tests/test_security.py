"""``turbo_async.security``: the per-socket budgets (token bucket, capped refusal log), the origin
validator and the system check ``turbo_async.W009`` that looks for it.

The validator is driven through Channels' ``WebsocketCommunicator`` with the handshake's headers
set as a browser sets them; the same refusals against real uvicorn are in
tests/integration/test_abuse.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator

import turbo_async.routing
from turbo_async import security
from turbo_async.checks import check_origins
from turbo_async.security import (
    LogBudget,
    OriginValidator,
    RefusalLog,
    TokenBucket,
    accepts_any_origin,
    origin_validator_of,
    parse_origin,
)

PACKAGE_ORIGIN_LOG = security._origin_log  # before the fixture below replaces it in each test


@pytest.fixture(autouse=True)
def fresh_handshake_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake log budget is per process and per minute: each test starts with a full one."""
    monkeypatch.setattr(security, "_origin_log", LogBudget("refused WebSocket handshakes", 20))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- TokenBucket -----------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=20, burst=5, clock=Clock())
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, burst=5, clock=clock)
    for _ in range(5):
        bucket.take()
    clock.now += 0.125  # 2.5 tokens at 20 per second
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 3600  # a quiet hour saves up no more than the burst
    assert sum(bucket.take() for _ in range(10)) == 5


def test_a_steady_sender_under_the_rate_is_never_refused() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, burst=1, clock=clock)
    for _ in range(1000):
        clock.now += 0.05
        assert bucket.take()


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    bucket = TokenBucket(rate=0, burst=1, clock=Clock())
    assert all(bucket.take() for _ in range(10000))


# -- RefusalLog ------------------------------------------------------------------------------


def test_only_the_first_refusals_of_a_socket_are_logged_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog("10.0.0.1:5000", limit=3)
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        for n in range(1000):
            log.warning("refused a subscription: %s", n)
        log.summary()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[0] == "refused a subscription: 0 [WebSocket from 10.0.0.1:5000]"
    assert "counted, not logged" in lines[2]
    assert lines[3] == "997 more refusals on the WebSocket from 10.0.0.1:5000 were not logged"


def test_no_summary_when_nothing_was_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog("peer", limit=3)
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        log.warning("one")
        log.summary()
    assert [r.getMessage() for r in caplog.records] == ["one [WebSocket from peer]"]


def test_refused_handshakes_log_a_bounded_number_of_lines_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttled = LogBudget("refused WebSocket handshakes", 5, clock=clock)
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        for n in range(500):
            throttled.warning("refused", peer=f"10.0.0.{n % 7}:1")
        clock.now += 61
        throttled.warning("refused", peer="10.0.0.1:1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused"] * 5 + [
        "495 more refused WebSocket handshakes were not logged in the last 60 s, from 7 peers", "refused"
    ]


def test_refusals_of_many_sockets_share_the_process_budget(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that reconnects after every close gets a new per-socket budget each time: the
    process's LOGGED_REFUSALS_PER_MINUTE bounds what all sockets write together."""
    settings.TURBO_ASYNC = {"LOGGED_REFUSALS_PER_SOCKET": 5, "LOGGED_REFUSALS_PER_MINUTE": 12}
    clock = Clock()
    monkeypatch.setattr(security, "abuse_log", LogBudget("abuse lines", lambda: 12, clock=clock))
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        for n in range(40):  # 40 connections, 50 refusals each: 200 per-socket lines and summaries
            log = RefusalLog(f"10.0.0.1:{1000 + n}", 5)
            for _ in range(50):
                log.warning("bad signature")
            log.summary()
            security.log_abuse("closed %s", f"10.0.0.1:{1000 + n}", peer=f"10.0.0.1:{1000 + n}")
        written = len(caplog.records)
        clock.now += 60
        security.log_abuse("closed again", peer="10.0.0.1:2000")
    lines = [r.getMessage() for r in caplog.records]
    assert written == 12, lines
    # the first socket's 7 lines and the second's first 5 were written: 39 peers lost some
    assert lines[12] == "268 more abuse lines were not logged in the last 60 s, from 39 peers"
    assert lines[13] == "closed again"


async def test_a_flood_that_stops_is_summed_up_when_its_minute_ends(caplog: pytest.LogCaptureFixture) -> None:
    budget = LogBudget("abuse lines", 2)
    budget.WINDOW = 0.2  # a short minute, on the running loop's timer
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        for _ in range(10):
            budget.warning("refused", peer="10.0.0.1:1")
        assert len(caplog.records) == 2
        await asyncio.sleep(0.5)
    assert [r.getMessage() for r in caplog.records][2:] == [
        "8 more abuse lines were not logged in the last 0 s, from 1 peers"
    ]


# -- origins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://example.com", "https://example.com"),
        ("https://example.com:443", "https://example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("HTTP://Example.COM", "http://example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origins_are_read_as_scheme_host_and_port(value: str, expected: str) -> None:
    assert str(parse_origin(value)) == expected


@pytest.mark.parametrize("value", ["null", "", "example.com", "ftp://example.com", "http://", "http://x:99999"])
def test_what_is_not_an_origin(value: str) -> None:
    assert parse_origin(value) is None


async def handshake(
    origin: str | None, host: str = "127.0.0.1:8000", scheme: str = "ws", **extra: str
) -> tuple[bool, Any]:
    app = OriginValidator(AuthMiddlewareStack(URLRouter(turbo_async.routing.websocket_urlpatterns)))
    headers = [(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in extra.items()]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(app, "/ws/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, code = await communicator.connect()
    await communicator.disconnect()
    return connected, code


@pytest.mark.django_db(transaction=True)
async def test_the_pages_own_origin_is_accepted() -> None:
    assert (await handshake("http://127.0.0.1:8000"))[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",  # another port
        "https://127.0.0.1:8000",  # another scheme
        "https://127.0.0.1",
        "http://127.0.0.1",  # port 80, not 8000
        "http://evil.example:8000",
        "null",  # sandboxed iframes, file:// pages
        None,  # no Origin header at all
    ],
)
async def test_other_origins_are_refused(origin: str | None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        connected, _ = await handshake(origin)
    assert not connected  # uvicorn answers this close-before-accept with 403 (test_abuse.py)
    assert any("refused a WebSocket handshake" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db(transaction=True)
async def test_allowed_hosts_star_does_not_let_other_origins_in(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    assert not (await handshake("http://evil.example"))[0]
    assert (await handshake("http://anything.example:8000", host="anything.example:8000"))[0]


@pytest.mark.django_db(transaction=True)
async def test_a_host_outside_allowed_hosts_is_not_its_own_origin() -> None:
    # A forged Host does not make an origin "same-origin": Django would not serve that host.
    assert not (await handshake("http://evil.example", host="evil.example"))[0]


@pytest.mark.django_db(transaction=True)
async def test_csrf_trusted_origins_are_accepted_with_their_scheme_and_port(settings: Any) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.example.org:8443"]
    assert (await handshake("https://app.example.com"))[0]
    assert not (await handshake("http://app.example.com"))[0]
    assert not (await handshake("https://app.example.com:444"))[0]
    assert (await handshake("https://a.b.example.org:8443"))[0]
    assert not (await handshake("https://a.example.org"))[0]
    assert not (await handshake("https://evil-example.org:8443"))[0]


@pytest.mark.django_db(transaction=True)
async def test_a_secure_page_has_an_https_origin() -> None:
    assert (await handshake("https://127.0.0.1:8000", scheme="wss"))[0]
    assert not (await handshake("http://127.0.0.1:8000", scheme="wss"))[0]


@pytest.mark.django_db(transaction=True)
async def test_a_tls_proxy_is_recognised_by_secure_proxy_ssl_header(settings: Any) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert (await handshake("https://localhost", host="localhost", **{"x-forwarded-proto": "https"}))[0]
    assert not (await handshake("https://localhost", host="localhost"))[0]


def test_allowed_origins_must_be_origins() -> None:
    with pytest.raises(ValueError, match="allowed_origins must be origins"):
        OriginValidator(object(), allowed_origins=["example.com"])


# -- the origin check of an ASGI application and W009 -----------------------------------------

inner = AuthMiddlewareStack(URLRouter(turbo_async.routing.websocket_urlpatterns))
guarded = ProtocolTypeRouter({"websocket": OriginValidator(inner)})
channels_guarded = ProtocolTypeRouter({"websocket": AllowedHostsOriginValidator(inner)})
unguarded = ProtocolTypeRouter({"websocket": inner})


def test_the_origin_check_is_found_through_the_router_and_middleware() -> None:
    assert isinstance(origin_validator_of(guarded), OriginValidator)
    assert origin_validator_of(unguarded) is None
    assert not accepts_any_origin(origin_validator_of(guarded))
    assert accepts_any_origin(origin_validator_of(unguarded))


def test_no_warning_without_a_star_in_allowed_hosts(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["example.com"]
    settings.ASGI_APPLICATION = f"{__name__}.unguarded"
    assert check_origins() == []


def test_no_warning_when_our_validator_guards_the_route(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    settings.ASGI_APPLICATION = f"{__name__}.guarded"
    assert check_origins() == []


@pytest.mark.parametrize("app", ["channels_guarded", "unguarded"])
def test_a_star_with_a_route_that_accepts_any_origin_warns(settings: Any, app: str) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    settings.ASGI_APPLICATION = f"{__name__}.{app}"
    # AllowedHostsOriginValidator reads ALLOWED_HOSTS when it is made: make it under "*".
    globals()["channels_guarded"] = ProtocolTypeRouter({"websocket": AllowedHostsOriginValidator(inner)})
    [warning] = check_origins()
    assert warning.id == "turbo_async.W009"
    assert "accepts every origin" in warning.msg
    assert "turbo_async.security.OriginValidator" in str(warning.hint)


def test_a_star_without_asgi_application_warns_that_it_cannot_tell(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    del settings.ASGI_APPLICATION
    [warning] = check_origins()
    assert warning.id == "turbo_async.W009"
    assert "ASGI_APPLICATION is not set" in warning.msg


def test_a_star_with_an_asgi_application_that_does_not_import_warns(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["*"]
    settings.ASGI_APPLICATION = "tests.no_such_module.application"
    [warning] = check_origins()
    assert "could not be imported" in warning.msg


@pytest.mark.django_db(transaction=True)
async def test_at_most_20_refused_handshakes_are_logged_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/security.rst: one WARNING per refused handshake, at most 20 a minute per process (the
    budget the package builds, not the fixture's copy of it)."""
    package = PACKAGE_ORIGIN_LOG  # with its own limit, and a minute of its own
    monkeypatch.setattr(security, "_origin_log", LogBudget(package.what, package.per_minute))
    with caplog.at_level(logging.WARNING, logger="turbo_async"):
        for _ in range(25):
            assert not (await handshake("http://evil.example:8000"))[0]
    assert len([r for r in caplog.records if "refused a WebSocket handshake" in r.getMessage()]) == 20
