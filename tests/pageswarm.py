"""Pages in processes of their own: :class:`PageSwarm` runs a share of a test's
:class:`tests.pageclient.PageClient` pages in a child process (``python -m tests.pageswarm``), so
that a thousand modelled pages are not all served by the test process's one event loop.

Issue 21's rolling restart measured the reconnections' p95 at 2.1-2.7 s with the 1,000 pages in the
test process while py-spy showed the web processes mostly idle: the pages' own loop was the
bottleneck. Spread over three children, each page reconnects as soon as its backoff allows.

The child sets Django up with the test run's settings (the same environment as the web processes,
so the same database and layer), renders its pages itself (the room's message ids from the
database, the stream's position with ``history.at_render``, as ``{% turbo_subscribe %}`` does) and
answers the parent's commands, one JSON object per line on stdin / stdout:

- ``{"op": "urls", "urls": [...]}``: the web processes a load balancer would send new connections to
  (the pages pick one at random when they reconnect);
- ``{"op": "state"}``: runs each page's gap timer (:meth:`PageClient.tick`), then answers every
  page's room, message ids shown, the web process it is on and its counts (:class:`Stats`);
- ``{"op": "stop"}``: closes every page and exits.

``time.monotonic()`` is the system's monotonic clock on Linux, the same in every process: the
parent compares the children's reconnection attempt times with its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.pageclient import PageClient, Stats

READY_TIMEOUT_S = 120.0
"""How long a child may take to load and subscribe its pages."""
LINE_LIMIT = 2**26
"""The longest line a child may answer (``state`` lists every page's message ids)."""


@dataclass(frozen=True)
class Room:
    """What a child knows of a page's room: its primary key and its stream's group."""

    pk: int
    group: str


@dataclass
class PageState:
    """One page as the child reported it."""

    room: int
    shown: set[int]
    url: str | None
    stats: Stats


class PageSwarm:
    """A child process holding ``pages``: ``(room pk, stream group, signed stream name, first
    web process url)`` each. ``env`` is the environment of the test's web processes (settings,
    database, layer hosts); ``layer`` the layer's ``BACKEND`` path and ``hosts`` its ``hosts``."""

    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, urls: list[str], layer: str, hosts: list[Any],
        pages: list[tuple[int, str, str, str]],
    ) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.spec = {"urls": urls, "layer": layer, "hosts": hosts, "pages": pages}
        self.process: asyncio.subprocess.Process | None = None
        self.log: Any = None

    async def start(self) -> None:
        """Starts the child and waits until every page is loaded and subscribed."""
        self.log = self.log_path.open("ab")
        root = Path(__file__).resolve().parent.parent
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.pageswarm", cwd=root, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=self.log, limit=LINE_LIMIT,
        )
        answer = await asyncio.wait_for(self._send(self.spec), READY_TIMEOUT_S)
        if answer.get("ready") != len(self.spec["pages"]):
            raise RuntimeError(f"{self.name} did not subscribe its pages: {answer} (log: {self.log_path})")

    async def urls(self, urls: list[str]) -> None:
        await self._send({"op": "urls", "urls": urls})

    async def state(self) -> list[PageState]:
        answer = await self._send({"op": "state"})
        return [
            PageState(page["room"], set(page["shown"]), page["url"], Stats(**page["stats"])) for page in answer["pages"]
        ]

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self._send({"op": "stop"}), 30)
                await asyncio.wait_for(self.process.wait(), 30)
            except (TimeoutError, RuntimeError, ConnectionError):
                self.process.kill()
                await self.process.wait()
        self.process = None
        self.log.close()

    async def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}); its log: {self.log_path}")
        answer: dict[str, Any] = json.loads(line)
        return answer


# -- the child ------------------------------------------------------------------------------------


async def _child() -> None:
    import django

    django.setup()
    from django.utils.module_loading import import_string

    from tests.testapp.models import Message
    from turbo_async import history

    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    def answer(value: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    spec = json.loads(await commands.readline())
    layer = import_string(spec["layer"])(hosts=spec["hosts"])

    async def render(room: Room) -> tuple[set[int], tuple[str, int] | None]:
        position = await asyncio.to_thread(history.at_render, layer, room.group)
        shown = await asyncio.to_thread(
            lambda: set(Message.objects.filter(room_id=room.pk).values_list("pk", flat=True))
        )
        return shown, (position.epoch, position.offset) if position else None

    urls: list[str] = list(spec["urls"])  # shared by every page, changed in place
    pages = [PageClient(urls, Room(pk, group), signed, render) for pk, group, signed, _ in spec["pages"]]
    firsts = [first for *_, first in spec["pages"]]
    for start in range(0, len(pages), 100):  # pages open over a few seconds, not all at once
        group = pages[start:start + 100]
        await asyncio.gather(*(page.load() for page in group))
        for page, first in zip(group, firsts[start:start + 100], strict=True):
            page.start(first)
        await asyncio.wait_for(asyncio.gather(*(page.subscribed.wait() for page in group)), READY_TIMEOUT_S)
    answer({"ready": len(pages)})
    while line := await commands.readline():
        command = json.loads(line)
        if command["op"] == "urls":
            urls[:] = command["urls"]
            answer({})
        elif command["op"] == "state":
            for page in pages:
                await page.tick()
            answer({"pages": [
                {"room": page.room.pk, "shown": sorted(page.shown), "url": page.url,
                 "stats": dataclasses.asdict(page.stats)}
                for page in pages
            ]})
        elif command["op"] == "stop":
            await asyncio.gather(*(page.stop() for page in pages))
            answer({})
            return


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    asyncio.run(_child())
