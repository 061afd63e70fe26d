"""``turbo_async.pending``: the changes of a transaction are published after it commits, once per
object, on their own database, never for rollbacks.

The ``published`` fixture (tests/conftest.py) records what would be sent to the broker.
"""

from __future__ import annotations

import pytest
from django.db import transaction

import turbo_async
from tests.conftest import Published
from tests.testapp.factories import MessageFactory, RoomFactory
from tests.testapp.models import Message, Room

# Commits, rollbacks, savepoints and a second alias: the PostgreSQL phase of make test runs them too
# (docs/testing.rst); tests/test_run_tests.py checks that its marker expression selects them.
pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "other"]), pytest.mark.database]


def test_autocommit_save_publishes_at_once(published: Published) -> None:
    with turbo_async.suppress():
        room = RoomFactory()
    message = MessageFactory(room=room)
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_nothing_is_published_before_commit(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        MessageFactory(room=room)
        assert published == []
    assert len(published) == 1


def test_several_saves_in_one_transaction_are_one_task_and_created_sticks(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        message = MessageFactory(room=room, text="a")
        message.text = "b"
        message.save()
        message.text = "c"
        message.save()
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_ten_saves_of_one_row_in_a_transaction_are_one_task(published: Published) -> None:
    """The README's comparison with turbo-django: 10 saves, 1 task."""
    room = RoomFactory()
    with transaction.atomic():
        message = MessageFactory(room=room, text="0")
        for n in range(1, 10):
            message.text = str(n)
            message.save()
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_updates_only_are_not_created(published: Published) -> None:
    message = MessageFactory()
    published.clear()
    with transaction.atomic():
        message.save()
        message.save()
    assert published.events() == [("testapp.message", message.pk, "save", False)]


def test_delete_supersedes_saves(published: Published) -> None:
    message = MessageFactory()
    published.clear()
    pk, room_id = message.pk, message.room_id
    with transaction.atomic():
        message.text = "edited"
        message.save()
        message.delete()
    assert published.events() == [("testapp.message", pk, "delete", False)]
    snapshot = published.items()[0]["snapshot"]
    assert snapshot["id"] == pk
    assert snapshot["room_id"] == room_id
    assert snapshot["text"] == "edited"
    assert isinstance(snapshot["created_at"], str)


def test_rollback_publishes_nothing(published: Published) -> None:
    room = RoomFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        MessageFactory(room=room)
        raise RuntimeError("rolled back")
    assert published == []
    assert not Message.objects.exists()


def test_savepoint_rollback_drops_only_its_changes(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        kept = MessageFactory(room=room)
        try:
            with transaction.atomic():
                MessageFactory(room=room)
                raise RuntimeError("savepoint rolled back")
        except RuntimeError:
            pass
    assert published.events() == [("testapp.message", kept.pk, "save", True)]


def test_savepoint_rollback_of_a_delete_keeps_the_save(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        message = MessageFactory(room=room)
        try:
            with transaction.atomic():
                Message.objects.get(pk=message.pk).delete()
                raise RuntimeError("savepoint rolled back")
        except RuntimeError:
            pass
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_released_savepoint_counts(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        with transaction.atomic():
            message = MessageFactory(room=room)
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_a_new_transaction_after_a_rollback_starts_clean(published: Published) -> None:
    room = RoomFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        MessageFactory(room=room)
        raise RuntimeError
    with transaction.atomic():
        message = MessageFactory(room=room)
    assert published.events() == [("testapp.message", message.pk, "save", True)]


def test_one_task_per_object(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        messages = [MessageFactory(room=room) for _ in range(5)]
        for message in messages:
            message.save()
    assert sorted(call[1] for call in published.events()) == sorted(m.pk for m in messages)


def test_changes_are_published_on_commit_of_their_own_alias(published: Published) -> None:
    with transaction.atomic(using="other"):
        room = Room.objects.using("other").create(name="elsewhere")
        message = Message.objects.using("other").create(room=room, text="x")
        with transaction.atomic(using="default"):
            pass  # committing default publishes nothing of "other"
        assert published == []
    assert published.events() == [("testapp.message", message.pk, "save", True)]
    assert published.items()[0]["using"] == "other"
