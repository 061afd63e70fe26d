"""``turbo_async.changes``: what one committed change carries to a worker (JSON only), how two
changes of one object merge, and how a deleted row is rebuilt from its snapshot."""

from __future__ import annotations

import json

import pytest

import turbo_async as turbo
from tests.conftest import Published
from tests.testapp.factories import DocumentFactory, MessageFactory, TagFactory
from turbo_async import changes
from turbo_async.changes import Change, snapshot


def test_a_save_carries_label_pk_event_created_and_flower_name() -> None:
    message = MessageFactory.build(pk=5)
    change = Change.save(message, created=True, shadow="testapp.MessageStream.on_save")
    assert (change.label, change.pk, change.event, change.created, change.snapshot) == (
        "testapp.message", 5, "save", True, None,
    )
    assert change.shadow == "testapp.MessageStream.on_save"


@pytest.mark.django_db
def test_a_delete_carries_a_snapshot_of_the_row() -> None:
    with turbo.suppress():
        message = MessageFactory(text="bye")
    change = Change.delete(message)
    assert (change.event, change.created) == ("delete", False)
    assert change.snapshot == snapshot(message)


@pytest.mark.django_db
def test_a_snapshot_is_keyed_by_attname_and_json_safe() -> None:
    with turbo.suppress():
        message = MessageFactory(text="t")
    values = snapshot(message)
    assert set(values) == {"id", "room_id", "text", "created_at"}
    assert (values["id"], values["room_id"], values["text"]) == (message.pk, message.room_id, "t")
    assert isinstance(values["created_at"], str)
    assert json.loads(json.dumps(values)) == values


def test_the_flower_name_is_not_part_of_a_changes_identity() -> None:
    assert Change("testapp.message", 1, "save", shadow="a") == Change("testapp.message", 1, "save", shadow="b")


def test_saves_merge_and_created_sticks() -> None:
    merged = Change("testapp.message", 1, "save", True).merge(Change("testapp.message", 1, "save", False))
    assert merged == Change("testapp.message", 1, "save", True)


def test_a_delete_supersedes_saves() -> None:
    delete = Change("testapp.message", 1, "delete", snapshot={"id": 1})
    assert Change("testapp.message", 1, "save", True).merge(delete) is delete


def test_a_save_after_a_delete_is_a_creation() -> None:
    merged = Change("testapp.message", 1, "delete", snapshot={"id": 1}).merge(
        Change("testapp.message", 1, "save", False, shadow="testapp.MessageStream.on_save")
    )
    assert merged == Change("testapp.message", 1, "save", True)
    assert merged.shadow == "testapp.MessageStream.on_save"


def test_a_change_describes_itself_for_log_lines() -> None:
    assert Change("testapp.message", 5, "save").describe() == "testapp.message pk=5 (save)"
    assert Change("testapp.tag", "news", "delete").describe() == "testapp.tag pk='news' (delete)"


def test_integer_and_string_primary_keys_stay_as_they_are() -> None:
    assert changes.json_pk(MessageFactory.build(pk=7)) == 7
    assert changes.json_pk(TagFactory.build(slug="news")) == "news"


def test_a_uuid_primary_key_becomes_its_string() -> None:
    document = DocumentFactory.build()
    assert changes.json_pk(document) == str(document.pk)


@pytest.mark.django_db(transaction=True)
def test_uuid_and_string_primary_keys_travel_as_strings(published: Published) -> None:
    document = DocumentFactory()
    TagFactory(slug="news")
    assert published.events() == [
        ("testapp.document", str(document.pk), "save", True),
        ("testapp.tag", "news", "save", True),
    ]


@pytest.mark.django_db
def test_rebuilt_instance_has_its_field_values() -> None:
    with turbo.suppress():
        document = DocumentFactory(body="b", published="2026-11-27")
    document.refresh_from_db()
    rebuilt = changes.rebuild(type(document), snapshot(document), "default")
    assert (rebuilt.pk, rebuilt.title, rebuilt.body, rebuilt.published) == (
        document.pk, document.title, "b", document.published,
    )
    assert rebuilt._state.adding is False


def test_a_rebuilt_instance_belongs_to_its_database() -> None:
    rebuilt = changes.rebuild(type(MessageFactory.build()), {"id": 3, "room_id": 4, "text": "t"}, "other")
    assert (rebuilt.pk, rebuilt.room_id, rebuilt._state.db) == (3, 4, "other")
