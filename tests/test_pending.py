"""Changes are published after commit, once per object, never for rollbacks.

These tests record what would be sent to the broker by replacing the broadcast task's
``apply_async`` (the seam between the request path and Celery); the database commits for real.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction

import turbo_async
from demo.chat.models import Message, Room
from tests.factories import DocumentFactory, MessageFactory, RoomFactory, TagFactory
from turbo_async import tasks

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


class Published(list[dict[str, Any]]):
    def events(self) -> list[tuple[str, Any, str, bool]]:
        return [tuple(call["args"]) for call in self]  # type: ignore[misc]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    calls = Published()

    def apply_async(args: Any, kwargs: Any = None, **options: Any) -> None:
        # The payload must survive JSON: that is all a broker carries.
        calls.append(json.loads(json.dumps({"args": args, "kwargs": kwargs or {}, "options": options})))

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    return calls


def test_autocommit_save_publishes_at_once(published: Published) -> None:
    with turbo_async.suppress():
        room = RoomFactory()
    message = MessageFactory(room=room)
    assert published.events() == [("chat.message", message.pk, "save", True)]


def test_task_is_named_after_the_hook_for_flower(published: Published) -> None:
    message = MessageFactory()
    message.delete()
    assert [call["options"]["shadow"] for call in published] == [
        "chat.MessageStream.on_save",
        "chat.MessageStream.on_delete",
    ]


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
    assert published.events() == [("chat.message", message.pk, "save", True)]


def test_updates_only_are_not_created(published: Published) -> None:
    message = MessageFactory()
    published.clear()
    with transaction.atomic():
        message.save()
        message.save()
    assert published.events() == [("chat.message", message.pk, "save", False)]


def test_delete_supersedes_saves(published: Published) -> None:
    message = MessageFactory()
    published.clear()
    pk, room_id = message.pk, message.room_id
    with transaction.atomic():
        message.text = "edited"
        message.save()
        message.delete()
    assert published.events() == [("chat.message", pk, "delete", False)]
    snapshot = published[0]["kwargs"]["snapshot"]
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
    assert published.events() == [("chat.message", kept.pk, "save", True)]


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
    assert published.events() == [("chat.message", message.pk, "save", True)]


def test_released_savepoint_counts(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        with transaction.atomic():
            message = MessageFactory(room=room)
    assert published.events() == [("chat.message", message.pk, "save", True)]


def test_a_new_transaction_after_a_rollback_starts_clean(published: Published) -> None:
    room = RoomFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        MessageFactory(room=room)
        raise RuntimeError
    with transaction.atomic():
        message = MessageFactory(room=room)
    assert published.events() == [("chat.message", message.pk, "save", True)]


def test_one_task_per_object(published: Published) -> None:
    room = RoomFactory()
    with transaction.atomic():
        messages = [MessageFactory(room=room) for _ in range(5)]
        for message in messages:
            message.save()
    assert sorted(call[1] for call in published.events()) == sorted(m.pk for m in messages)


def _fixture(tmp_path: Any) -> str:
    fixture = tmp_path / "rooms.json"
    fixture.write_text(
        json.dumps(
            [
                {"model": "chat.room", "pk": 50, "fields": {"name": "F", "created_at": "2026-01-01T00:00:00Z"}},
                {"model": "chat.message", "pk": 51, "fields": {"room": 50, "text": "t", "created_at": "2026-01-01T00:00:00Z"}},
            ]
        )
    )
    return str(fixture)


def test_raw_saves_from_fixtures_broadcast_after_commit_as_in_turbo_django(published: Published, tmp_path: Any) -> None:
    call_command("loaddata", _fixture(tmp_path), verbosity=0)
    assert Message.objects.filter(pk=51).exists()
    assert [p["args"] for p in published] == [["chat.message", 51, "save", True]]


def test_fixtures_loaded_inside_suppress_publish_nothing(published: Published, tmp_path: Any) -> None:
    with turbo_async.suppress():
        call_command("loaddata", _fixture(tmp_path), verbosity=0)
    assert Message.objects.filter(pk=51).exists()
    assert published == []


def test_suppress_publishes_nothing(published: Published) -> None:
    with turbo_async.suppress():
        MessageFactory()
    assert published == []


def test_models_whose_stream_has_no_hooks_publish_nothing(published: Published) -> None:
    room = RoomFactory()  # RoomStream defines neither on_save nor on_delete
    room.delete()
    assert published == []


def test_uuid_and_string_primary_keys_travel_as_strings(published: Published) -> None:
    document = DocumentFactory()
    TagFactory(slug="news")
    assert published.events() == [
        ("testapp.document", str(document.pk), "save", True),
        ("testapp.tag", "news", "save", True),
    ]


def test_changes_are_published_on_commit_of_their_own_alias(published: Published) -> None:
    with transaction.atomic(using="other"):
        room = Room.objects.using("other").create(name="elsewhere")
        message = Message.objects.using("other").create(room=room, text="x")
        with transaction.atomic(using="default"):
            pass  # committing default publishes nothing of "other"
        assert published == []
    assert published.events() == [("chat.message", message.pk, "save", True)]
    assert published[0]["kwargs"] == {"using": "other"}


def test_broker_failure_never_fails_the_save(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def apply_async(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)
    with caplog.at_level(logging.ERROR, logger="turbo_async"):
        message = MessageFactory()
    assert Message.objects.filter(pk=message.pk).exists()
    assert (
        f"could not queue the broadcast of chat.message pk={message.pk} (save): "
        "ConnectionRefusedError: broker down"
    ) in caplog.text


def test_default_queue_unless_configured(published: Published) -> None:
    from django.test import override_settings

    MessageFactory()
    assert "queue" not in published[0]["options"]
    with override_settings(TURBO_ASYNC={"QUEUE": "broadcasts"}):
        MessageFactory()
    assert published[1]["options"]["queue"] == "broadcasts"
