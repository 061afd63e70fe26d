"""Layer 9 (beside :mod:`turbo_async.consumers`): what keeps one WebSocket client from costing
everyone else.

- :class:`TokenBucket`: the message-rate budget of one socket (``MAX_MESSAGES_PER_SECOND``,
  ``MESSAGE_BURST``); the consumer closes a socket that exhausts it with code 1008.
- :class:`RefusalLog`: the first ``LOGGED_REFUSALS_PER_SOCKET`` refusals of a socket are logged,
  the rest only counted and summed up in one line, so a client cannot fill the disk.
- :class:`LogBudget`: a process-wide budget of log lines a minute, then counted and summed up
  once the minute is over. ``abuse_log`` holds the lines about refusals and abusers
  (``LOGGED_REFUSALS_PER_MINUTE``), so a client that reconnects after every close cannot fill
  the disk either; refused handshakes have a budget of their own.
- :class:`OriginValidator`: ASGI middleware for the WebSocket route that accepts a handshake only
  from the page's own origin (scheme, host **and** port of the request) or one of
  ``CSRF_TRUSTED_ORIGINS``; everything else (another port or scheme, ``null``, no ``Origin``) is
  refused with 403 and a log line.
- :func:`origin_validator_of`: finds the origin validator in front of an ASGI application's WebSocket
  route (used by the system check ``turbo_async.W009``).

It reads settings only; nothing here imports the rest of the library but :mod:`turbo_async.conf`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import OriginValidator as ChannelsOriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from . import conf

logger = logging.getLogger("turbo_async")

DEFAULT_PORTS = {"http": 80, "https": 443}


# -- per-socket budgets ----------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; each message takes one.

    ``rate <= 0`` turns the limit off. The clock is injectable so tests need not sleep.
    """

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        """Spend one token; ``False`` when none is left (the caller refuses the message)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        # The epsilon: a client sending exactly at the rate must not lose to rounding.
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False


class LogBudget:
    """A process-wide budget of log lines about ``what``: at most ``per_minute`` a minute.

    Beyond it a line is counted (with its peer) instead of written, and one line says how many
    were not written, and from how many peers, once the minute is over: at the first line after
    it, or from a timer on the running event loop (when there is one), so a flood that stops is
    still summed up. ``per_minute`` is a number or a function that reads it (a setting);
    ``<= 0`` turns the limit off. The clock is injectable so tests need not sleep.
    """

    WINDOW = 60.0
    MAX_PEERS = 1000
    """Peers remembered for a summary (the count goes on past it)."""

    def __init__(
        self, what: str, per_minute: int | Callable[[], int], log: logging.Logger = logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.per_minute = per_minute
        self.log = log
        self.clock = clock
        self.started = float("-inf")
        self.used = 0
        self.dropped = 0
        self.peers: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None

    def allow(self, peer: str) -> bool:
        """Whether a line about ``peer`` may be written now (``False``: it was counted)."""
        now = self.clock()
        if now - self.started >= self.WINDOW:
            self.report()
            self.started, self.used = now, 0
        limit = self.per_minute() if callable(self.per_minute) else self.per_minute
        if limit <= 0 or self.used < limit:
            self.used += 1
            return True
        if self.dropped == 0:
            self._report_later()
        self.dropped += 1
        if len(self.peers) < self.MAX_PEERS:
            self.peers.add(peer)
        return False

    def warning(self, message: str, *args: Any, peer: str = "") -> None:
        """``log.warning(message, *args)``, within the budget."""
        if self.allow(peer):
            self.log.warning(message, *args)

    def report(self) -> None:
        """One line for what the current minute did not write (none: nothing)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.dropped:
            peers = f"{len(self.peers)}+" if len(self.peers) >= self.MAX_PEERS else str(len(self.peers))
            self.log.warning(
                f"%d more {self.what} were not logged in the last %.0f s, from %s peers",
                self.dropped, self.WINDOW, peers,
            )
        self.dropped = 0
        self.peers = set()

    def _report_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: summed up with the first line of the next minute
        self.timer = loop.call_later(max(0.0, self.started + self.WINDOW - self.clock()), self._minute_over)

    def _minute_over(self) -> None:
        self.timer = None
        self.report()
        self.started, self.used = self.clock(), 0


abuse_log = LogBudget(
    "lines about refused messages and closed abusers (TURBO_ASYNC['LOGGED_REFUSALS_PER_MINUTE'])",
    lambda: conf.get().LOGGED_REFUSALS_PER_MINUTE,
)
"""The process's budget of lines about refusals and abusers (``LOGGED_REFUSALS_PER_MINUTE``)."""


def log_abuse(message: str, *args: Any, peer: str) -> None:
    """Log one warning about a refusal or an abuser from ``peer``, within the process's budget."""
    abuse_log.warning(message, *args, peer=peer)


class RefusalLog:
    """Warnings about one socket: the first ``limit`` are logged, the rest counted.

    A client that sends a bad signature a hundred thousand times writes ``limit`` lines, plus one
    summary (:meth:`summary`) when the socket closes.
    """

    def __init__(self, peer: str, limit: int, log: logging.Logger = logger) -> None:
        self.peer = peer
        self.limit = max(0, limit)
        self.log = log
        self.count = 0

    def warning(self, message: str, *args: Any) -> None:
        self.count += 1
        if self.count > self.limit:
            return
        more = (
            " (further refusals on this socket are counted, not logged: "
            "TURBO_ASYNC['LOGGED_REFUSALS_PER_SOCKET'])"
            if self.count == self.limit
            else ""
        )
        if self._allowed():
            self.log.warning(f"{message} [WebSocket from %s]{more}", *args, self.peer)

    def exception(self, message: str, *args: Any) -> None:
        """Like :meth:`warning`, at ERROR with the traceback of the exception being handled."""
        self.count += 1
        if self.count <= self.limit and self._allowed():
            self.log.exception(f"{message} [WebSocket from %s]", *args, self.peer)

    def _allowed(self) -> bool:
        return abuse_log.allow(self.peer)

    @property
    def suppressed(self) -> int:
        return max(0, self.count - self.limit)

    def summary(self) -> None:
        """One line for the refusals that were not logged (none: nothing)."""
        if self.suppressed and self._allowed():
            self.log.warning(
                "%d more refusals on the WebSocket from %s were not logged", self.suppressed, self.peer
            )


def peer(scope: Mapping[str, Any]) -> str:
    """``host:port`` of the client (as the ASGI server saw it: the proxy's behind a proxy)."""
    client = scope.get("client")
    if isinstance(client, (list, tuple)) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return "an unknown client"


# -- origins ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{shown}"
        return f"{self.scheme}://{shown}:{self.port}"


def parse_origin(value: str) -> Origin | None:
    """An ``Origin`` header (or a ``CSRF_TRUSTED_ORIGINS`` entry) as scheme, host and port;
    ``None`` for ``null``, a missing scheme or host, or a bad port."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme])


@lru_cache(maxsize=8)
def _trusted(entries: tuple[str, ...]) -> tuple[Origin, ...]:
    return tuple(origin for origin in map(parse_origin, entries) if origin is not None)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _secure(scope: dict[str, Any]) -> bool:
    """Whether the page was served over TLS: ``wss``, or Django's ``SECURE_PROXY_SSL_HEADER``
    (e.g. ``("HTTP_X_FORWARDED_PROTO", "https")``) when a TLS proxy speaks plain ws to us."""
    if scope.get("scheme") == "wss":
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        meta_name, expected = proxy_header
        header = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        value = _header(scope, header)
        if value is not None and value.split(",")[0].strip() == expected:
            return True
    return False


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # as Django's request.get_host()
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def request_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin of the page that opened this socket if it is our own: the handshake's
    ``Host`` (validated against ``ALLOWED_HOSTS``, as Django validates it) with the scheme it
    was served under. ``None`` when there is no valid ``Host``."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return parse_origin(f"{'https' if _secure(scope) else 'http'}://{host}")


class OriginValidator:
    """Refuse WebSocket handshakes from other sites (cross-site WebSocket hijacking).

    Accepted: an ``Origin`` with the same scheme, host and port as the request (its ``Host``
    header, which must be in ``ALLOWED_HOSTS``), or one of ``settings.CSRF_TRUSTED_ORIGINS``
    (``"https://example.com"``, ``"https://*.example.com"``; read on each handshake), or one of
    ``allowed_origins`` given here. Refused with 403 and a ``WARNING`` line: any other origin,
    ``Origin: null`` and a missing ``Origin`` (browsers always send one; scripts can). Unlike
    Channels' ``AllowedHostsOriginValidator`` it compares the port and the scheme, and
    ``ALLOWED_HOSTS = ["*"]`` does not turn it off::

        "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
    """

    def __init__(self, application: Any, allowed_origins: Iterable[str] = ()) -> None:
        self.application = application
        self.allowed_origins = tuple(allowed_origins)
        bad = [entry for entry in self.allowed_origins if parse_origin(entry) is None]
        if bad:
            raise ValueError(
                f"allowed_origins must be origins like 'https://example.com' (scheme, host, "
                f"optional port), not {bad!r}."
            )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError(
                "turbo_async.security.OriginValidator guards WebSocket routes only: put it in "
                "ProtocolTypeRouter's 'websocket' entry."
            )
        header = _header(scope, b"origin")
        reason = self.refusal(scope, header)
        if reason is None:
            return await self.application(scope, receive, send)
        client = peer(scope)
        _origin_log.warning(
            "refused a WebSocket handshake from %s: %s (turbo_async.security.OriginValidator "
            "accepts the page's own origin and CSRF_TRUSTED_ORIGINS)",
            client, reason, peer=client,
        )
        return await WebsocketDenier()(scope, receive, send)  # type: ignore[arg-type]

    def refusal(self, scope: dict[str, Any], header: str | None) -> str | None:
        """Why this handshake is refused, or ``None`` if it is accepted."""
        if header is None:
            return "no Origin header"
        origin = parse_origin(header)
        if origin is None:
            return f"Origin {header[:100]!r} is not a scheme://host[:port] origin"
        if origin == request_origin(scope):
            return None
        trusted = _trusted(tuple(getattr(settings, "CSRF_TRUSTED_ORIGINS", ()))) + _trusted(self.allowed_origins)
        for allowed in trusted:
            if allowed.scheme != origin.scheme or allowed.port != origin.port:
                continue
            if allowed.host == origin.host:
                return None
            if allowed.host.startswith("*.") and is_same_domain(origin.host, allowed.host[1:]):
                return None
        host = _header(scope, b"host")
        return f"Origin {str(origin)!r} is neither the page's own (Host {host!r}) nor trusted"


TrustedOriginValidator = OriginValidator


_origin_log = LogBudget("refused WebSocket handshakes", 20)


def origin_validator_of(application: Any, depth: int = 12) -> Any:
    """The origin validator in front of ``application``'s WebSocket route: an :class:`OriginValidator`,
    a Channels ``OriginValidator`` (``AllowedHostsOriginValidator`` makes one), or ``None``.

    Follows ``ProtocolTypeRouter``'s ``"websocket"`` entry and middleware's ``inner`` /
    ``application`` / ``app`` attributes, as Channels' own classes store them.
    """
    current = application
    for _ in range(depth):
        if current is None:
            return None
        if isinstance(current, (OriginValidator, ChannelsOriginValidator)):
            return current
        mapping = getattr(current, "application_mapping", None)
        if isinstance(mapping, dict):
            current = mapping.get("websocket")
            continue
        current = next(
            (getattr(current, name) for name in ("application", "inner", "app") if hasattr(current, name)),
            None,
        )
    return None


def accepts_any_origin(validator: Any) -> bool:
    """Whether an origin validator found by :func:`origin_validator_of` lets every origin in."""
    if validator is None:
        return True
    if isinstance(validator, OriginValidator):
        return False
    return "*" in getattr(validator, "allowed_origins", ())
