"""``turbo_async.signals``: the ``post_save`` / ``post_delete`` receivers note a change in the
pending changes of the transaction, and nothing inside ``suppress()``.

Receiver-level tests replace ``pending.record`` (what the receivers call) with a list; the others
read what the ``published`` fixture (tests/conftest.py) recorded after the commit.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models.signals import post_delete, post_save

import turbo_async
from tests.conftest import Published
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Message, Plain, Room
from turbo_async import pending, signals
from turbo_async.changes import Change

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Change]]:
    """What the receivers hand to ``pending.record``: ``(alias, change)``."""
    calls: list[tuple[str, Change]] = []
    monkeypatch.setattr(pending, "record", lambda alias, item: calls.append((alias, item)))
    return calls


def test_a_save_is_recorded_with_its_label_pk_and_flower_name(recorded: list[tuple[str, Change]]) -> None:
    with turbo_async.suppress():
        room = RoomFactory()
    message = MessageFactory(room=room)
    assert recorded == [("default", Change("testapp.message", message.pk, "save", True))]
    assert recorded[0][1].shadow == "testapp.MessageStream.on_save"


def test_a_delete_is_recorded_with_a_snapshot_of_the_row(recorded: list[tuple[str, Change]]) -> None:
    with turbo_async.suppress():
        message = MessageFactory(text="last words")
    pk = message.pk
    message.delete()
    [(alias, change)] = recorded
    assert (alias, change.label, change.pk, change.event) == ("default", "testapp.message", pk, "delete")
    assert change.snapshot is not None and change.snapshot["text"] == "last words"
    assert change.shadow == "testapp.MessageStream.on_delete"


@pytest.mark.database  # a second alias
def test_a_change_is_recorded_on_the_database_it_was_made_on(recorded: list[tuple[str, Change]]) -> None:
    with turbo_async.suppress():
        other_room = Room.objects.using("other").create(name="elsewhere")
    Message.objects.using("other").create(room=other_room, text="x")
    assert [alias for alias, _ in recorded] == ["other"]


def test_signals_record_nothing_inside_suppress(recorded: list[tuple[str, Change]]) -> None:
    with turbo_async.suppress():
        message = MessageFactory()
        message.text = "edited"
        message.save()
        message.delete()
    assert recorded == []


def test_suppress_ends_with_its_block(recorded: list[tuple[str, Change]]) -> None:
    with turbo_async.suppress():
        MessageFactory()
    message = MessageFactory()
    assert [change.pk for _, change in recorded] == [message.pk]


def test_suppress_ends_even_when_its_block_raises(recorded: list[tuple[str, Change]]) -> None:
    with pytest.raises(RuntimeError), turbo_async.suppress():
        raise RuntimeError("inside suppress")
    assert not pending.suppressed()
    MessageFactory()
    assert len(recorded) == 1


def test_connect_connects_only_the_events_given(recorded: list[tuple[str, Change]]) -> None:
    signals.connect(Plain, {"save": "testapp.SomeStream.on_save"})
    try:
        assert post_save.has_listeners(Plain)
        assert not post_delete.has_listeners(Plain)
        plain = Plain.objects.create(name="p")
        plain.delete()
    finally:
        signals.disconnect(Plain)
    assert [(change.event, change.shadow) for _, change in recorded] == [("save", "testapp.SomeStream.on_save")]


def test_connecting_a_model_twice_keeps_one_receiver(recorded: list[tuple[str, Change]]) -> None:
    signals.connect(Plain, {"save": "first", "delete": "first"})
    signals.connect(Plain, {"save": "second", "delete": "second"})
    try:
        Plain.objects.create(name="p")
    finally:
        signals.disconnect(Plain)
    assert [change.shadow for _, change in recorded] == ["first"]


def test_disconnect_removes_both_receivers() -> None:
    signals.connect(Plain, {"save": "s", "delete": "d"})
    signals.disconnect(Plain)
    assert not post_save.has_listeners(Plain)
    assert not post_delete.has_listeners(Plain)


def _fixture(tmp_path: Any) -> str:
    fixture = tmp_path / "rooms.json"
    fixture.write_text(
        json.dumps(
            [
                {"model": "testapp.room", "pk": 50, "fields": {"name": "F", "created_at": "2026-01-01T00:00:00Z"}},
                {"model": "testapp.message", "pk": 51, "fields": {"room": 50, "text": "t", "created_at": "2026-01-01T00:00:00Z"}},
            ]
        )
    )
    return str(fixture)


def test_raw_saves_from_fixtures_broadcast_after_commit_as_in_turbo_django(published: Published, tmp_path: Any) -> None:
    call_command("loaddata", _fixture(tmp_path), verbosity=0)
    assert Message.objects.filter(pk=51).exists()
    assert published.events() == [("testapp.message", 51, "save", True)]


def test_fixtures_loaded_inside_suppress_publish_nothing(published: Published, tmp_path: Any) -> None:
    with turbo_async.suppress():
        call_command("loaddata", _fixture(tmp_path), verbosity=0)
    assert Message.objects.filter(pk=51).exists()
    assert published == []


def test_suppress_publishes_nothing(published: Published) -> None:
    with turbo_async.suppress():
        MessageFactory()
    assert published == []
