"""Out-of-order and repeated broadcast tasks converge to the database (property-based).

The test app's ``MessageStream`` (tests/testapp/streams.py) appends a created message to ``#messages``,
replaces an edited one and removes a deleted one. Hypothesis generates create/update/delete
sequences on a few messages of one room, each committed on its own (``transactional_db``), so each
publishes one ``turbo_async.batch`` task of one item. The tasks are recorded at the publish seam
(``broadcast.apply_async``, JSON round trip as a broker would) instead of being sent, then run with
``turbo_async.worker.broadcast`` - the worker's code - in a random order, with random duplicates (Celery
delivers at least once), while ``turbo_async.testing.capture_broadcasts`` records the frames. The
frames are applied to a small model of Turbo 8's stream actions on the ``#messages`` container,
and the result is compared with the container as rendered from the final database state.
No Redis and no worker process: the code under test is the worker's, run in this process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
from django.template.loader import render_to_string
from django.utils.html import strip_spaces_between_tags
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Message, Room
from turbo_async import suppress, tasks, worker
from turbo_async.testing import Frame, capture_broadcasts

pytestmark = pytest.mark.django_db(transaction=True)

CONTAINER = "messages"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

Task = tuple[list[Any], dict[str, Any]]


# -- a small model of Turbo's stream actions on #messages -----------------------------------


def normalise(html: str) -> str:
    """Markup as a frame carries it (frames are rendered inside ``{% spaceless %}``)."""
    return strip_spaces_between_tags(html.strip())


class _Elements(HTMLParser):
    """The top-level elements of an HTML fragment: (id, outer HTML) in document order."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self.source = source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.depth = 0
        self.start = 0
        self.current_id: str | None = None
        self.ids_inside: set[str] = set()
        self.elements: list[tuple[str, str]] = []
        self.feed(source)
        self.close()
        assert self.depth == 0, f"unbalanced markup: {source!r}"

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element_id = dict(attrs).get("id")
        if self.depth == 0:
            assert element_id, f"a child of #{CONTAINER} without an id: {self.get_starttag_text()}"
            self.start, self.current_id = self._offset(), element_id
        elif element_id:
            self.ids_inside.add(element_id)
        if tag not in VOID:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element_id = dict(attrs).get("id")
        if element_id and self.depth:
            self.ids_inside.add(element_id)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        self.depth -= 1
        if self.depth == 0:
            end = self.source.index(">", self._offset()) + 1
            assert self.current_id is not None
            self.elements.append((self.current_id, self.source[self.start : end]))


def elements(fragment: str) -> list[tuple[str, str]]:
    return _Elements(fragment).elements


@dataclass
class Dom:
    """``#messages`` as Turbo 8 leaves it: its children, as (id, outer HTML), in order."""

    children: list[tuple[str, str]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [element_id for element_id, _ in self.children]

    def apply(self, frame: Frame) -> None:
        assert frame.targets is None, f"the model handles target= only, not {frame}"
        new = elements(normalise(frame.html)) if frame.action != "remove" else []
        if frame.target == CONTAINER:
            if frame.action in ("append", "prepend"):
                # Turbo 8 removes the container's children that have the ids of the new ones
                # first (removeDuplicateTargetChildren), then inserts them.
                incoming = {element_id for element_id, _ in new}
                kept = [child for child in self.children if child[0] not in incoming]
                self.children = kept + new if frame.action == "append" else new + kept
            elif frame.action == "update":
                self.children = new
            else:
                raise NotImplementedError(f"{frame.action} of the container itself: {frame}")
            return
        nested = {i for _, html in self.children for i in _Elements(html).ids_inside}
        if frame.target in nested:
            raise NotImplementedError(f"frames on elements inside a message are not modelled: {frame}")
        if frame.target not in self.ids():
            return  # Turbo ignores a frame whose target is not on the page
        index = self.ids().index(frame.target)
        if frame.action == "remove":
            del self.children[index]
        elif frame.action == "replace":
            self.children[index : index + 1] = new
        elif frame.action == "before":
            self.children[index:index] = new
        elif frame.action == "after":
            self.children[index + 1 : index + 1] = new
        else:
            raise NotImplementedError(f"{frame.action} inside a message: {frame}")


def rendered_page(room: Room) -> Dom:
    """``#messages`` as a room page renders it now: testapp/message.html (the template the
    stream's frames render) for each message of the room, in the model's order."""
    html = "".join(
        render_to_string("testapp/message.html", {"message": message})
        for message in Message.objects.filter(room=room).order_by("created_at", "id")
    )
    return Dom(elements(normalise(html)))


# -- recording the tasks a commit publishes ------------------------------------------------


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Task]:
    """The broadcast tasks published at commit, in publish order, as a broker hands them to a
    worker (JSON): ``worker.broadcast(*args, **kwargs)`` runs one as the worker does."""
    recorded: list[Task] = []

    def apply_async(args: Any, kwargs: Any = None, **options: Any) -> None:
        recorded.append(json.loads(json.dumps([list(args), dict(kwargs or {})])))

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    return recorded


def run_tasks(room: Room, schedule: list[Task], dom: Dom) -> None:
    """Run tasks as workers would, one after another, applying the room's frames to ``dom``."""
    for args, kwargs in schedule:
        with capture_broadcasts(room, on_commit=False) as frames:
            worker.broadcast(*args, **kwargs)
        for frame in frames:
            dom.apply(frame)


# -- the operations hypothesis generates ----------------------------------------------------

texts = st.text(alphabet="ab <>&\"'é", min_size=1, max_size=8)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), texts),
        st.tuples(st.just("update"), st.integers(0, 3), texts),
        st.tuples(st.just("delete"), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=8,
)


def perform(room: Room, operation: tuple[Any, ...], rows: list[Message]) -> None:
    """One committed change (autocommit: each save or delete is its own transaction)."""
    if operation[0] == "create" or not rows:
        rows.append(MessageFactory(room=room, text=operation[-1] if operation[0] != "delete" else "x"))
    elif operation[0] == "update":
        row = rows[operation[1] % len(rows)]
        row.text = operation[2]
        row.save()
    else:
        rows.pop(operation[1] % len(rows)).delete()


def new_room() -> Room:
    with suppress():
        return RoomFactory()


HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- properties -----------------------------------------------------------------------------


@HYPOTHESIS
@given(operations=operations, data=st.data())
def test_tasks_in_any_order_with_duplicates_converge_to_the_database(
    published: list[Task], operations: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    """Tasks run at any time after their commit - interleaved with later changes, out of order,
    several times - and the page ends up showing exactly the rows of the database.

    Compared as a mapping id -> HTML (plus: no id twice): the order of the messages cannot
    converge, because Turbo's append puts an element at the end whenever its frame arrives; a
    create task that runs late, or twice, moves its message to the end. A reload puts it back.
    """
    published.clear()
    room = new_room()
    dom = Dom()
    rows: list[Message] = []
    for operation in operations:
        perform(room, operation, rows)
        # Some of the tasks published so far run now (a worker is fast), possibly again.
        run_now = data.draw(st.lists(st.sampled_from(published), max_size=3), label="run now")
        run_tasks(room, run_now, dom)
    # Every task runs at least once more, in any order, some of them twice.
    rest = list(published) + data.draw(st.lists(st.sampled_from(published), max_size=4), label="duplicates")
    run_tasks(room, data.draw(st.permutations(rest), label="order"), dom)

    expected = rendered_page(room)
    assert len(set(dom.ids())) == len(dom.ids()), f"an id is on the page twice: {dom.ids()}"
    assert dict(dom.children) == dict(expected.children)


@HYPOTHESIS
@given(operations=operations)
def test_tasks_run_once_in_commit_order_render_the_page_exactly(
    published: list[Task], operations: list[tuple[Any, ...]]
) -> None:
    """One worker, no redelivery: each task runs once, in commit order, and the page is
    identical to a fresh render, order included."""
    published.clear()
    room = new_room()
    dom = Dom()
    rows: list[Message] = []
    for operation in operations:
        before = len(published)
        perform(room, operation, rows)
        run_tasks(room, published[before:], dom)
    assert dom == rendered_page(room)


def test_each_committed_change_publishes_one_task(published: list[Task]) -> None:
    """The seam the properties rely on: one recorded task per committed change."""
    room = new_room()
    message = MessageFactory(room=room, text="a")
    message.text = "b"
    message.save()
    message.delete()
    assert [(item["label"], item["event"], item["created"]) for (items,), _ in published for item in items] == [
        ("testapp.message", "save", True),
        ("testapp.message", "save", False),
        ("testapp.message", "delete", False),
    ]
    assert set(published[2][0][0][0]) == {"v", "label", "pk", "event", "created", "snapshot"}


def test_a_duplicated_create_does_not_show_the_message_twice(published: list[Task]) -> None:
    """A redelivered create task appends again; Turbo drops the earlier element with that id."""
    room = new_room()
    MessageFactory(room=room, text="hello")
    dom = Dom()
    run_tasks(room, [published[0], published[0]], dom)
    assert dom == rendered_page(room)


def test_an_edit_whose_create_runs_later_shows_the_latest_text(published: list[Task]) -> None:
    """The replace finds nothing on the page; the create, run after, renders the row as it is."""
    room = new_room()
    message = MessageFactory(room=room, text="first")
    message.text = "second"
    message.save()
    dom = Dom()
    run_tasks(room, [published[1], published[0]], dom)
    assert dom == rendered_page(room)
    assert "second" in dom.children[0][1]


def test_a_create_that_runs_after_the_delete_shows_nothing(published: list[Task]) -> None:
    room = new_room()
    MessageFactory(room=room, text="gone").delete()
    dom = Dom()
    run_tasks(room, [published[1], published[0]], dom)
    assert dom.children == []


def test_the_model_applies_turbo_8_duplicate_removal() -> None:
    dom = Dom([("message-1", '<div id="message-1">old</div>'), ("message-2", '<div id="message-2">b</div>')])
    dom.apply(Frame("s", "g", "append", CONTAINER, None, '<div id="message-1">new</div>', ""))
    assert dom.children == [
        ("message-2", '<div id="message-2">b</div>'),
        ("message-1", '<div id="message-1">new</div>'),
    ]


def test_the_model_ignores_frames_whose_target_is_absent() -> None:
    dom = Dom([("message-1", '<div id="message-1">a</div>')])
    dom.apply(Frame("s", "g", "replace", "message-9", None, '<div id="message-9">x</div>', ""))
    dom.apply(Frame("s", "g", "remove", "message-9", None, "", ""))
    assert dom.ids() == ["message-1"]
