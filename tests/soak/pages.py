"""The soak's pages: :class:`tests.pageclient.PageClient` (the bundled client's behaviour), each
checking its own stream, in a client process of their own (``python -m tests.soak.pages CONFIG``).

:class:`SoakPage` adds what the soak counts to the client, without changing what it does:

- a model of Turbo's actions on the page (``append`` adds a message, ``replace`` replaces one that
  is there, ``remove`` removes it), so a page can be compared with the database at the end;
- **order violations** and **duplicates applied**: a frame applied whose last offset is below, or
  equal to, that of the frame applied before it (the client must apply each offset once, in order);
- **arrivals out of order**: on one connection, a numbered frame that starts at or before the end
  of the previous one (two workers number and send their batches in two steps, so a batch can
  reach the layer after a later one: the client holds the later one and applies both in order);
- **duplicate arrivals**: a frame whose offsets the page had applied already, which the client
  drops (frames of the subscription a refresh replaced, still in flight on the same socket, are
  counted apart as ``stale``);
- **delivered** and **covered**: the offsets applied from frames, and those a refresh jumped over;
- **replays**: after a reconnection, seconds from the socket closing until the page applied
  the stream's offset of the moment it was subscribed again.

The process churns and jitters its own pages (``CHURN_PER_MINUTE`` of them close cleanly and
reconnect each minute; every ``DROP_EVERY_S`` on average a ``DROP_FRACTION`` of the open sockets is
reset: SO_LINGER 0 and close, so the server sees a TCP reset and no close frame) until the
orchestrator (:mod:`tests.soak.run`) asks it to settle; then it waits until every page has its
stream's last offset and shows its room's messages in the database, and writes its counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket as sockets
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.pageclient import PageClient

FRAME = re.compile(r'<turbo-stream action="(\w+)" target="([^"]*)"[^>]*>(.*?)</turbo-stream>', re.DOTALL)
MESSAGE_ID = re.compile(r'id="message-(\d+)"')
TARGET_ID = re.compile(r"message-(\d+)$")


class SoakPage(PageClient):
    def __init__(self, urls: list[str], room: Any, signed_name: str, render: Any, group: str, offset_of: Any) -> None:
        super().__init__(urls, room, signed_name, render)
        self.group = group
        self.offset_of = offset_of  # async (group) -> (epoch, offset) | None, read from Redis
        self.first: tuple[str, int] | None = None
        self.delivered = 0
        self.covered = 0
        self.order_violations = 0
        self.applied_duplicates = 0
        self.arrived_ahead = 0
        self.dups = 0
        self.checking = False
        self.last_applied: tuple[str, int] | None = None
        self.stale = 0
        self.unnumbered = 0
        self.epochs = 0
        self.stale_up_to = -1
        self.connection_last: tuple[str, int] | None = None
        self.replay_from: tuple[float, int] | None = None
        self.replays: list[float] = []
        self.replays_refreshed = 0
        self.notes: list[str] = []

    async def load(self) -> None:
        await super().load()
        self.first = self.last_applied = self.position

    async def subscribe(self, socket: Any) -> None:
        self.connection_last = None  # a new subscription: the server starts a new sequence
        await super().subscribe(socket)

    def apply(self, data: str) -> None:
        self.stats.applied += 1
        if self.checking and self.position is not None:
            last = self.last_applied
            if last is not None and last[0] == self.position[0] and self.position[1] <= last[1]:
                if self.position[1] == last[1]:
                    self.applied_duplicates += 1
                else:
                    self.order_violations += 1
                self.notes.append(f"applied {self.position[1]} after {last[1]}")
            self.last_applied = self.position
        for action, target, body in FRAME.findall(data):
            if action in ("append", "prepend"):
                self.shown.update(int(pk) for pk in MESSAGE_ID.findall(body))
            elif action == "replace":
                match = TARGET_ID.match(target)
                if match and int(match.group(1)) in self.shown:  # Turbo replaces only what is there
                    self.shown.update(int(pk) for pk in MESSAGE_ID.findall(body))
            elif action == "remove":
                match = TARGET_ID.match(target)
                if match:
                    self.shown.discard(int(match.group(1)))

    async def refresh(self, socket: Any, reason: str) -> None:
        before = self.position
        if self.replay_from is not None:
            self.replays_refreshed += 1
            self.replay_from = None
        await super().refresh(socket, reason)
        self.stale_up_to = self.position[1] if self.position else -1
        self.last_applied = self.position
        after = self.position
        self.notes.append(f"refresh ({reason}) of room {self.room.pk} at {time.time():.1f}: {before} -> {after}")
        if before and after and before[0] == after[0]:
            self.covered += max(0, after[1] - before[1])
        elif before and after:
            self.epochs += 1
            self.first = after  # a new epoch: counted from where the page was rendered in it

    async def receive(self, socket: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribed" and self.closed_at is not None and self.position is not None:
            closed_at = self.closed_at
            now = await self.offset_of(self.group)
            if now is not None and now[0] == self.position[0] and now[1] > self.position[1]:
                self.replay_from = (closed_at, now[1])
        epoch, offset = message.get("epoch"), message.get("offset")
        numbered = "data" in message and isinstance(epoch, str) and isinstance(offset, int)
        if "data" in message and not numbered:
            self.unnumbered += 1
        before = self.position
        refreshes = len(self.stats.refreshes)
        if numbered:
            first = message.get("from_offset", offset)
            same_epoch = self.position is not None and self.position[0] == epoch
            if same_epoch and offset <= self.position[1]:  # type: ignore[index]
                if offset <= self.stale_up_to:
                    self.stale += 1
                else:
                    self.dups += 1
                    self.notes.append(f"duplicate {first}-{offset} at {self.position} via {self.url} at {time.time():.1f}")
                self.stats.duplicates += 1
                return
            last = self.connection_last
            if last is not None and last[0] == epoch and first <= last[1]:
                self.arrived_ahead += 1
            self.connection_last = (epoch, offset)
        self.checking = numbered
        try:
            await super().receive(socket, message)
        finally:
            self.checking = False
        after = self.position
        if len(self.stats.refreshes) == refreshes and before and after and before[0] == after[0]:
            self.delivered += after[1] - before[1]
        elif len(self.stats.refreshes) == refreshes and before is None and after is not None:
            self.first = (after[0], (message.get("from_offset") or after[1]) - 1)
            self.delivered += after[1] - self.first[1]
        if self.replay_from is not None and self.position is not None and self.position[1] >= self.replay_from[1]:
            self.replays.append(time.monotonic() - self.replay_from[0])
            self.replay_from = None

    def drop(self) -> bool:
        """Reset the socket: no close frame, the peer reads ECONNRESET (a phone losing its network)."""
        connection = self.socket
        transport = getattr(connection, "transport", None)
        if transport is None:
            return False
        raw = transport.get_extra_info("socket")
        if raw is not None:
            raw.setsockopt(sockets.SOL_SOCKET, sockets.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return True

    async def leave(self) -> bool:
        """Close cleanly (a close frame); the client reconnects as after any close."""
        if self.socket is None:
            return False
        try:
            await self.socket.close()
        except Exception:
            return False
        return True


# -- the client process ---------------------------------------------------------------------------


def render_with(layer: Any) -> Any:
    from tests.testapp.models import Message
    from turbo_async import history

    async def load(room: Any) -> tuple[set[int], tuple[str, int] | None]:
        # As {% turbo_subscribe %} renders: the position first, then the rows.
        position = await asyncio.to_thread(history.at_render, layer, room.stream.broadcastable_stream_name)
        shown = await asyncio.to_thread(lambda: set(Message.objects.filter(room=room).values_list("pk", flat=True)))
        return shown, (position.epoch, position.offset) if position else None

    return load


def offsets_reader(redis_url: str) -> Any:
    from redis import asyncio as aioredis

    from turbo_async import history

    client = aioredis.Redis.from_url(redis_url)

    async def offset_of(group: str) -> tuple[str, int] | None:
        epoch, offset = await client.hmget(history.position_key(group), ["epoch", "offset"])
        return None if epoch is None else (epoch.decode(), int(offset or 0))

    return offset_of


async def serve(config: dict[str, Any]) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    from tests.testapp.models import Message, Room

    control = Path(config["control"])
    layer = get_channel_layer()
    render = render_with(layer)
    offset_of = offsets_reader(config["layer_url"])
    rooms = await asyncio.to_thread(lambda: list(Room.objects.filter(pk__in=config["rooms"]).order_by("pk")))
    names = {room.pk: await asyncio.to_thread(lambda r=room: (r.stream.signed_stream_name, r.stream.broadcastable_stream_name))
             for room in rooms}
    urls: list[str] = config["urls"]
    pages = []
    for n in range(config["pages"]):
        room = rooms[(config["index"] + n * config["processes"]) % len(rooms)]
        signed, group = names[room.pk]
        pages.append(SoakPage(urls, room, signed, render, group, offset_of))
    for batch in range(0, len(pages), 50):  # pages open over a few seconds, not all at once
        group_of = pages[batch:batch + 50]
        await asyncio.gather(*(page.load() for page in group_of))
        for page in group_of:
            page.start(config.get("first_url") or random.choice(urls))
        await asyncio.wait_for(asyncio.gather(*(page.subscribed.wait() for page in group_of)), 120)
    (control / f"ready-{config['index']}").touch()

    churned = dropped = 0
    owed = 0.0
    next_drop = time.monotonic() + random.uniform(0.5, 1.5) * config["drop_every"]
    while not (control / "settle").exists():
        await asyncio.sleep(0.5)
        for page in pages:
            await page.tick()
        # The reconnections so far, for the storm's CPU window (tests/soak/storm.py).
        (control / f"storm-{config['index']}").write_text(str(sum(len(page.stats.reconnects) for page in pages)))
        owed += len(pages) * config["churn_per_minute"] / 120  # per half second
        while owed >= 1:
            owed -= 1
            if await random.choice(pages).leave():
                churned += 1
        if time.monotonic() >= next_drop and not (control / "calm").exists():
            next_drop = time.monotonic() + random.uniform(0.5, 1.5) * config["drop_every"]
            open_pages = [page for page in pages if page.socket is not None]
            for page in random.sample(open_pages, int(len(open_pages) * config["drop_fraction"])):
                dropped += page.drop()

    # Settle: every page at its stream's last offset and equal to the database, or the bound.
    started = time.monotonic()
    while True:
        finals = {names[room.pk][1]: await offset_of(names[room.pk][1]) for room in rooms}
        expected_rows = {room.pk: await asyncio.to_thread(
            lambda r=room: set(Message.objects.filter(room=r).values_list("pk", flat=True))) for room in rooms}
        behind = [page for page in pages if not caught_up(page, finals[page.group])]
        differ = [page for page in pages if page.shown != expected_rows[page.room.pk]]
        if (not behind and not differ) or time.monotonic() - started > config["settle_s"]:
            break
        for page in pages:
            await page.tick()
        await asyncio.sleep(0.5)
    settle_s = time.monotonic() - started
    result = tally(pages, finals, expected_rows, behind, differ)
    result.update(churned=churned, dropped=dropped, settle_s=round(settle_s, 1))
    await asyncio.gather(*(page.stop() for page in pages))
    return result


def caught_up(page: SoakPage, final: tuple[str, int] | None) -> bool:
    return final is None or (page.position is not None and page.position == final and not page.ahead)


def tally(
    pages: list[SoakPage], finals: dict[str, tuple[str, int] | None], rows: dict[int, set[int]],
    behind: list[SoakPage], differ: list[SoakPage],
) -> dict[str, Any]:
    expected = 0
    for page in pages:
        final = finals[page.group]
        if final is not None and page.first is not None and final[0] == page.first[0]:
            expected += final[1] - page.first[1]
    silent = []
    for page in behind:
        if not page.stats.refreshes or page.position != finals[page.group]:
            final = finals[page.group]
            silent.append(f"room {page.room.pk}: at {page.position}, stream at {final}, {len(page.ahead)} held")
    mismatched = [
        f"room {page.room.pk}: missing {sorted(rows[page.room.pk] - page.shown)[:5]}, "
        f"extra {sorted(page.shown - rows[page.room.pk])[:5]}" for page in differ
    ]
    return {
        "pages": len(pages),
        "expected": expected,
        "delivered": sum(page.delivered for page in pages),
        "covered": sum(page.covered for page in pages),
        "order_violations": sum(page.order_violations for page in pages),
        "applied_duplicates": sum(page.applied_duplicates for page in pages),
        "arrived_ahead": sum(page.arrived_ahead for page in pages),
        "duplicates": sum(page.dups for page in pages),
        "stale": sum(page.stale for page in pages),
        "unnumbered": sum(page.unnumbered for page in pages),
        "new_epochs": sum(page.epochs for page in pages),
        "refreshes": dict(Counter(reason for page in pages for reason in page.stats.refreshes)),
        "reconnects": [round(r, 4) for page in pages for r in page.stats.reconnects],
        "handshakes": [round(h, 4) for page in pages for h in page.stats.handshakes],
        "replays": [round(r, 4) for page in pages for r in page.replays],
        "replays_refreshed": sum(page.replays_refreshed for page in pages),
        "attempts": [round(a, 3) for page in pages for a in page.stats.attempts],
        "silent": silent,
        "mismatched": mismatched,
        "notes": [note for page in pages for note in page.notes][:40],
    }


def main() -> None:
    import django

    django.setup()
    config = json.loads(Path(sys.argv[1]).read_text())
    result = asyncio.run(serve(config))
    path = Path(config["result"])
    path.with_suffix(".tmp").write_text(json.dumps(result))
    os.replace(path.with_suffix(".tmp"), path)


if __name__ == "__main__":
    main()
