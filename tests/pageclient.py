"""Many pages without a browser: asyncio WebSocket clients that behave as the bundled turbo-async.js
does, for the tests that need hundreds or thousands of open pages (tests/integration/test_hosts.py).

Each :class:`PageClient` is one open page of one room: it connects to one of the web processes,
subscribes with its stream position (``"ranges": true``), applies numbered frames once and in
order, holds frames that came ahead of a missing offset for ``GAP_WAIT_S`` (as the client does),
and "refreshes" on a gap, a new epoch or a ``reset``: it renders again (the room's rows from the
database, and the stream's position read before them, as ``{% turbo_subscribe %}`` does) and
subscribes with that position. When its socket closes it reconnects with the client's backoff (0.5 s
doubling to 10 s, jitter of +/-20%) to a web process picked at random, as a load balancer would.

What a page shows is modelled as the set of message ids appended to it (frames carry
``id="message-<pk>"``). Everything a test asserts is counted here: reconnections and their
durations, refreshes and their reasons, frames applied and duplicates dropped.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

GAP_WAIT_S = 2.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
MESSAGE_ID = re.compile(r'id="message-(\d+)"')

Render = Callable[[Any], Awaitable[tuple[set[int], tuple[str, int] | None]]]
"""``render(room) -> (message ids shown, (epoch, offset) or None)``: a page load."""


@dataclass
class Stats:
    reconnects: list[float] = field(default_factory=list)
    """Seconds from a socket closing to the page subscribed again (the server's acknowledgement)."""
    attempts: list[float] = field(default_factory=list)
    """The time (``time.monotonic()``) of every connection attempt after the first."""
    refreshes: list[str] = field(default_factory=list)
    handshakes: list[float] = field(default_factory=list)
    """Seconds each reconnection's WebSocket handshake took (from the attempt to the open socket)."""
    applied: int = 0
    duplicates: int = 0


class PageClient:
    def __init__(self, urls: list[str], room: Any, signed_name: str, render: Render) -> None:
        self.urls = urls
        self.room = room
        self.signed_name = signed_name
        self.render = render
        self.shown: set[int] = set()
        self.position: tuple[str, int] | None = None
        self.ahead: dict[int, tuple[int, str]] = {}
        self.ahead_since: float | None = None
        self.stats = Stats()
        self.subscribed = asyncio.Event()
        self.url: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed_at: float | None = None
        self.stopping = False
        self.socket: Any = None

    async def load(self) -> None:
        """The first page load."""
        self.shown, self.position = await self.render(self.room)

    def start(self, url: str | None = None) -> None:
        self.task = asyncio.create_task(self.run(url))

    async def stop(self) -> None:
        self.stopping = True
        if self.socket is not None:
            await self.socket.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self, url: str | None) -> None:
        attempt = 0
        while not self.stopping:
            target = url or random.choice(self.urls)
            url = None
            try:
                # The page's own scheme, host and port (the server checks the Origin header).
                origin = "http://" + target.split("://", 1)[1].split("/", 1)[0]
                attempted = time.monotonic()
                # proxy=None: websockets otherwise reads the proxy settings of the environment
                # at every connect, a sixth of a client process's time in a reconnection storm
                # (py-spy, docs/soak.rst): the harness measured itself.
                async with connect(target, origin=origin, open_timeout=10, ping_interval=None,  # type: ignore[arg-type]
                                   proxy=None) as socket:
                    if self.closed_at is not None:
                        self.stats.handshakes.append(time.monotonic() - attempted)
                    self.socket, self.url = socket, target
                    attempt = 0
                    await self.subscribe(socket)
                    async for text in socket:
                        await self.receive(socket, json.loads(text))
            except (OSError, ConnectionClosed, TimeoutError, InvalidStatus, InvalidHandshake):
                # Refused or gone (a web process stopping, a 403 while its layer is away): again.
                pass
            self.socket = None
            self.subscribed.clear()
            if self.stopping:
                return
            if self.closed_at is None:
                self.closed_at = time.monotonic()
            delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**attempt) * random.uniform(0.8, 1.2)
            attempt += 1
            await asyncio.sleep(delay)
            self.stats.attempts.append(time.monotonic())

    async def subscribe(self, socket: Any) -> None:
        message: dict[str, Any] = {"type": "subscribe", "signed_channel_name": self.signed_name, "ranges": True}
        if self.position is not None:
            message["epoch"], message["offset"] = self.position
        await socket.send(json.dumps(message))

    async def receive(self, socket: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribed":
            self.subscribed.set()
            if self.closed_at is not None:
                self.stats.reconnects.append(time.monotonic() - self.closed_at)
                self.closed_at = None
            return
        if kind == "reset":
            await self.refresh(socket, f"reset: {message.get('reason')}")
            return
        if kind in ("ping", "error"):
            if kind == "error":
                self.stats.refreshes.append(f"error frame: {message.get('error')}")  # counted as a failure
            return
        if "data" not in message:
            return
        epoch, offset = message.get("epoch"), message.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            self.apply(message["data"])
            return
        first = message.get("from_offset", offset)
        if self.position is not None and self.position[0] != epoch:
            await self.refresh(socket, "new epoch")
            return
        if self.position is not None and offset <= self.position[1]:
            self.stats.duplicates += 1
            return
        if self.position is None or first == self.position[1] + 1:
            self.position = (epoch, offset)
            self.apply(message["data"])
            while self.position[1] + 1 in self.ahead:
                to, data = self.ahead.pop(self.position[1] + 1)
                self.position = (epoch, to)
                self.apply(data)
            if not self.ahead:
                self.ahead_since = None
            return
        self.ahead[first] = (offset, message["data"])
        if self.ahead_since is None:
            self.ahead_since = time.monotonic()
        elif time.monotonic() - self.ahead_since > GAP_WAIT_S:
            await self.refresh(socket, "gap")

    def apply(self, data: str) -> None:
        self.stats.applied += 1
        for pk in MESSAGE_ID.findall(data):
            self.shown.add(int(pk))

    async def tick(self) -> None:
        """The client's gap timer: frames held ahead of a missing one for longer than
        ``GAP_WAIT_S`` make the page refresh even when no other frame comes (tests call this
        while they wait)."""
        if self.ahead_since is not None and time.monotonic() - self.ahead_since > GAP_WAIT_S and self.socket:
            await self.refresh(self.socket, "gap")

    async def refresh(self, socket: Any, reason: str) -> None:
        """A page reload: render again, then subscribe with the new position on the same socket
        (the real page opens a new one; the server side is the same)."""
        self.stats.refreshes.append(reason)
        self.ahead.clear()
        self.ahead_since = None
        await socket.send(json.dumps({"type": "unsubscribe", "signed_channel_name": self.signed_name}))
        self.shown, self.position = await self.render(self.room)
        await self.subscribe(socket)
