"""Layer 10: test helpers for your own streams, capture the frames your code broadcasts and assert on them.

Inside a capture the whole pipeline runs in the test's process: when a transaction commits, the
hook runs at once (no Celery, no worker), renders, and its frames are recorded instead of being
sent to the channel layer. Inside Django's ``TestCase`` the transaction never commits, so the
capture also runs the ``on_commit`` callbacks registered in its block when it ends, as
``captureOnCommitCallbacks(execute=True)`` does::

    from turbo_async.testing import assert_broadcasts, capture_broadcasts

    class MessageTests(TestCase):
        def test_create_appends_to_the_room(self):
            room = Room.objects.create(name="Lobby")
            with assert_broadcasts(room, count=1, action="append", target="messages") as frames:
                Message.objects.create(room=room, text="Hi")
            assert "Hi" in frames[0].html

With pytest, the ``turbo_broadcasts`` fixture (installed with the package) records for the whole
test; see ``docs/testing.rst``.
"""

from __future__ import annotations

import html as html_lib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, models
from django.test import TestCase

from . import pending, recording
from .streams import Stream

__all__ = [
    "BroadcastRecorder",
    "Frame",
    "assert_broadcasts",
    "assert_no_broadcasts",
    "capture_broadcasts",
    "parse_frames",
]


@dataclass(frozen=True)
class Frame:
    """One ``<turbo-stream>`` element that was broadcast.

    ``stream`` is the stream's name (``"chat:RoomStream"``), ``group`` the Channels group of the
    stream instance it went to, ``html`` the content of its ``<template>`` (``""`` for
    ``remove``), ``markup`` the whole element.
    """

    stream: str
    group: str
    action: str
    target: str | None
    targets: str | None
    html: str
    markup: str
    attributes: dict[str, str] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        where = f"target={self.target!r}" if self.targets is None else f"targets={self.targets!r}"
        return f"{self.action} {where} on {self.stream} ({self.group})"


_OPEN = re.compile(r"<turbo-stream\b([^>]*)>", re.IGNORECASE)
_CLOSE = re.compile(r"</turbo-stream\s*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([^\s=/>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_TEMPLATE = re.compile(r"^\s*<template\b[^>]*>(.*)</template\s*>\s*$", re.IGNORECASE | re.DOTALL)


def parse_frames(markup: str, stream: str = "", group: str = "") -> list[Frame]:
    """Split markup into its ``<turbo-stream>`` elements.

    >>> [f.action for f in parse_frames('<turbo-stream action="remove" target="m-1">'
    ...                                 '<template></template></turbo-stream>')]
    ['remove']
    """
    frames: list[Frame] = []
    position = 0
    while True:
        opening = _OPEN.search(markup, position)
        if opening is None:
            return frames
        depth, cursor, inner_end = 1, opening.end(), opening.end()
        while depth:
            next_open = _OPEN.search(markup, cursor)
            next_close = _CLOSE.search(markup, cursor)
            if next_close is None:
                raise ValueError(f"Unclosed <turbo-stream> element in {markup!r}")
            if next_open is not None and next_open.start() < next_close.start():
                depth, cursor = depth + 1, next_open.end()
            else:
                depth, cursor = depth - 1, next_close.end()
                inner_end = next_close.start()
        attributes = {
            m.group(1).lower(): html_lib.unescape(m.group(2) or m.group(3) or m.group(4) or "")
            for m in _ATTRIBUTE.finditer(opening.group(1))
        }
        inner = markup[opening.end() : inner_end]
        template = _TEMPLATE.match(inner)
        frames.append(
            Frame(
                stream=stream,
                group=group,
                action=attributes.get("action", ""),
                target=attributes.get("target"),
                targets=attributes.get("targets"),
                html=template.group(1) if template else inner.strip(),
                markup=markup[opening.start() : cursor],
                attributes=attributes,
            )
        )
        position = cursor


StreamLike = models.Model | Stream | type[Stream] | str | None


def _matcher(obj_or_stream: StreamLike) -> tuple[Callable[[Frame], bool], str]:
    """A test for frames of ``obj_or_stream`` and a description of it for messages."""
    if obj_or_stream is None:
        return (lambda frame: True), "any stream"
    if isinstance(obj_or_stream, type) and issubclass(obj_or_stream, Stream):
        name = obj_or_stream.stream_name
        return (lambda frame: frame.stream == name), f"any {name} stream"
    if isinstance(obj_or_stream, models.Model):
        stream = getattr(obj_or_stream, "stream", None)
        if not isinstance(stream, Stream):
            raise TypeError(
                f"{type(obj_or_stream).__name__} has no stream: define a ModelStream for it, or "
                "pass a Stream, a Stream class or a stream name."
            )
        obj_or_stream = stream
    if isinstance(obj_or_stream, Stream):
        group = obj_or_stream.broadcastable_stream_name
        return (lambda frame: frame.group == group), repr(obj_or_stream)
    if isinstance(obj_or_stream, str):
        key = obj_or_stream
        return (lambda frame: key in (frame.stream, frame.group)), repr(key)
    raise TypeError(
        "Pass a model instance, a Stream, a Stream class or a stream name "
        f"('app:ClassName'), not {obj_or_stream!r}."
    )


def _criteria(**expected: str | None) -> tuple[Callable[[Frame], bool], str]:
    wanted = {k: v for k, v in expected.items() if v is not None}
    contains = wanted.pop("contains", None)

    def test(frame: Frame) -> bool:
        if contains is not None and contains not in frame.html:
            return False
        return all(getattr(frame, k) == v for k, v in wanted.items())

    shown = [f"{k}={v!r}" for k, v in wanted.items()]
    if contains is not None:
        shown.append(f"html containing {contains!r}")
    return test, (" with " + ", ".join(shown)) if shown else ""


class BroadcastRecorder:
    """The frames broadcast while a capture was active, with assertions on them.

    The assertions return the frames that matched, so that a test can look closer::

        [frame] = recorder.assert_broadcasts(room, count=1, action="append")
        assert "Hi" in frame.html
    """

    def __init__(self, obj_or_stream: StreamLike = None, *, deliver: bool = False) -> None:
        self.deliver = deliver  # also send the frames to the channel layer
        self._lock = threading.Lock()
        self._frames: list[Frame] = []
        self._keep, self._scope = _matcher(obj_or_stream)

    def record(self, group: str, message: dict[str, Any]) -> None:
        frames = parse_frames(str(message.get("data", "")), str(message.get("stream", "")), group)
        with self._lock:
            self._frames.extend(frame for frame in frames if self._keep(frame))

    @property
    def frames(self) -> list[Frame]:
        """Every frame recorded so far, in the order they were sent."""
        with self._lock:
            return list(self._frames)

    def clear(self) -> None:
        """Forget the frames recorded so far."""
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def _describe(self) -> str:
        frames = self.frames
        if not frames:
            return "Nothing was broadcast."
        return "Broadcast:\n" + "\n".join(f"  {frame}" for frame in frames)

    def assert_broadcasts(
        self,
        obj_or_stream: StreamLike = None,
        *,
        count: int | None = None,
        action: str | None = None,
        target: str | None = None,
        targets: str | None = None,
        contains: str | None = None,
    ) -> list[Frame]:
        """Assert that frames were broadcast to ``obj_or_stream`` (``count`` of them if given),
        optionally only counting those with this ``action``, ``target``, ``targets`` or HTML that
        ``contains`` a string. Returns the matching frames."""
        in_stream, where = _matcher(obj_or_stream)
        fits, how = _criteria(action=action, target=target, targets=targets, contains=contains)
        matched = [frame for frame in self.frames if in_stream(frame) and fits(frame)]
        if count is None and not matched:
            raise AssertionError(
                f"Expected frames on {where}{how}, but none were broadcast. {self._describe()}"
            )
        if count is not None and len(matched) != count:
            raise AssertionError(
                f"Expected {count} frame(s) on {where}{how}, but {len(matched)} were broadcast. "
                f"{self._describe()}"
            )
        return matched

    def assert_no_broadcasts(
        self,
        obj_or_stream: StreamLike = None,
        *,
        action: str | None = None,
        target: str | None = None,
        targets: str | None = None,
        contains: str | None = None,
    ) -> None:
        """Assert that nothing (or nothing matching the criteria) was broadcast to
        ``obj_or_stream`` (to any stream when it is None)."""
        self.assert_broadcasts(
            obj_or_stream, count=0, action=action, target=target, targets=targets,
            contains=contains,
        )


@contextmanager
def capture_broadcasts(
    obj_or_stream: StreamLike = None, *, on_commit: bool = True, deliver: bool = False
) -> Iterator[BroadcastRecorder]:
    """Record the frames broadcast inside the block, running the pipeline in this process.

    - ``obj_or_stream``: record only this stream's frames (default: every stream).
    - ``on_commit``: when the block ends, run the ``transaction.on_commit`` callbacks registered
      inside it on every database (needed inside ``TestCase``, whose transaction never commits;
      outside a transaction they have run already). Pass False when you run them yourself, e.g.
      with ``captureOnCommitCallbacks(execute=True)``.
    - ``deliver``: also send the frames to the channel layer (e.g. to a
      ``WebsocketCommunicator``); by default they are only recorded.

    Hook exceptions propagate to the test.
    """
    recorder = BroadcastRecorder(obj_or_stream, deliver=deliver)
    pending.cut()  # a row created before the block is not "created" by an edit inside it
    recording.start(recorder)
    try:
        with ExitStack() as stack:
            if on_commit:
                for alias in connections:
                    stack.enter_context(TestCase.captureOnCommitCallbacks(using=alias, execute=True))
            yield recorder
    finally:
        recording.stop(recorder)


@contextmanager
def assert_broadcasts(
    obj_or_stream: StreamLike = None,
    *,
    count: int | None = None,
    action: str | None = None,
    target: str | None = None,
    targets: str | None = None,
    contains: str | None = None,
    on_commit: bool = True,
) -> Iterator[list[Frame]]:
    """Assert that the block broadcasts frames to ``obj_or_stream`` (``count`` of them if given).

    Yields a list that holds the matching frames once the block has ended::

        with assert_broadcasts(room, count=1, action="append") as frames:
            Message.objects.create(room=room, text="Hi")
        assert "Hi" in frames[0].html
    """
    matched: list[Frame] = []
    with capture_broadcasts(on_commit=on_commit) as recorder:
        yield matched
    matched.extend(
        recorder.assert_broadcasts(
            obj_or_stream, count=count, action=action, target=target, targets=targets,
            contains=contains,
        )
    )


@contextmanager
def assert_no_broadcasts(
    obj_or_stream: StreamLike = None,
    *,
    action: str | None = None,
    target: str | None = None,
    targets: str | None = None,
    contains: str | None = None,
    on_commit: bool = True,
) -> Iterator[None]:
    """Assert that the block broadcasts nothing to ``obj_or_stream`` (to no stream if None)."""
    with capture_broadcasts(on_commit=on_commit) as recorder:
        yield
    recorder.assert_no_broadcasts(
        obj_or_stream, action=action, target=target, targets=targets, contains=contains
    )
