"""``turbo_async.changes``: what one committed change carries to a worker (JSON only), how two
changes of one object merge, how a deleted row is rebuilt from its snapshot, and the wire format
(versioned items, 0.1.0's read until 0.3.0)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import turbo_async as turbo
from tests.conftest import Published
from tests.testapp.factories import DocumentFactory, MessageFactory, TagFactory
from turbo_async import changes
from turbo_async.changes import Change, StreamAction, snapshot
from turbo_async.exceptions import PayloadError


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


# -- the wire format ---------------------------------------------------------------------------


def test_a_change_travels_as_a_versioned_item_and_comes_back_whole() -> None:
    change = Change("testapp.message", 5, "delete", snapshot={"id": 5, "room_id": 2}, request_id="r1")
    item = change.to_payload("other")
    assert item == {
        "v": 2, "label": "testapp.message", "pk": 5, "event": "delete", "created": False,
        "using": "other", "snapshot": {"id": 5, "room_id": 2}, "request_id": "r1",
    }
    back, using = changes.from_payload(json.loads(json.dumps(item)))
    assert (back, back.request_id, using) == (change, "r1", "other")


def test_a_save_on_the_default_database_carries_only_what_it_has() -> None:
    assert Change("testapp.message", 5, "save", True).to_payload() == {
        "v": 2, "label": "testapp.message", "pk": 5, "event": "save", "created": True,
    }


def test_a_stream_action_travels_with_its_request_id_beside_its_options() -> None:
    action = StreamAction("testapp:RoomStream", [1], {}, "refresh", {"selector": None, "id": None}, request_id="r1")
    item = action.to_payload()
    assert item == {
        "v": 2, "stream": "testapp:RoomStream", "args": [1], "kwargs": {}, "action": "refresh",
        "options": {"selector": None, "id": None}, "request_id": "r1",
    }
    back, using = changes.from_payload(item)
    assert (back, back.request_id, using) == (action, "r1", "default")


def test_0_1_0_items_without_a_version_are_read_until_0_3_0() -> None:
    change, using = changes.from_payload({"label": "testapp.message", "pk": 5, "event": "save", "created": True})
    assert (change, using) == (Change("testapp.message", 5, "save", True), "default")
    action, _ = changes.from_payload({
        "stream": "testapp:RoomStream", "args": [1], "kwargs": {}, "action": "refresh",
        "options": {"selector": None, "id": None, "request_id": "r0"},  # 0.1.0 kept it here
    })
    assert isinstance(action, StreamAction)
    assert (action.options, action.request_id) == ({"selector": None, "id": None}, "r0")


def test_0_1_0_one_change_tasks_become_items() -> None:
    assert changes.payload_of_message(
        "turbo_async.broadcast", ["testapp.message", 7, "delete", False], {"snapshot": {"id": 7}, "using": "other"}
    ) == [{"label": "testapp.message", "pk": 7, "event": "delete", "created": False, "snapshot": {"id": 7},
           "using": "other"}]
    assert changes.payload_of_message("turbo_async.stream_action", ["s:S", [], {}, "append", {"text": "x"}], {}) == [
        {"stream": "s:S", "args": [], "kwargs": {}, "action": "append", "options": {"text": "x"}}
    ]
    assert changes.payload_of_message("turbo_async.batch", [[{"v": 2}]], {}) == [{"v": 2}]


def test_a_later_wire_version_is_refused_with_what_to_do() -> None:
    with pytest.raises(PayloadError) as error:
        changes.from_payload({"v": 3, "label": "testapp.message", "pk": 5, "event": "save"})
    assert str(error.value) == (
        "A broadcast item of wire format version 3; this worker reads versions 1 and 2. Upgrade the "
        "workers before the web processes that send it."
    )


@pytest.mark.parametrize(("item", "message"), [
    (["testapp.message", 5, "save"], "A broadcast item must be a JSON object, not ['testapp.message', 5, 'save']"),
    ({"v": 2, "pk": 5, "event": "save"}, "A broadcast item has no 'label': "),
    ({"v": 2, "label": "testapp.message", "event": "save"}, "A broadcast item has no 'pk': "),
    ({"v": 2, "label": 5, "pk": 5, "event": "save"}, "A broadcast item's 'label' must be a str, not 5"),
    ({"v": 2, "label": "x.y", "pk": 5, "event": "explode"}, "Unknown broadcast event 'explode'; expected 'save' or"),
    ({"v": 2, "label": "x.y", "pk": 5, "event": "delete", "snapshot": [1]}, "x.y pk=5: 'snapshot' must be an object"),
    ({"v": 2, "stream": "s:S", "action": "append", "options": {"html": "<x>"}},
     "A stream action carries unknown options ['html']: "),
])
def test_a_malformed_item_is_refused_naming_what_is_wrong(item: Any, message: str) -> None:
    with pytest.raises(PayloadError) as error:
        changes.from_payload(item)
    assert str(error.value).startswith(message)


def test_a_message_that_is_no_broadcast_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"Not a broadcast message: task 'turbo_async.broadcast' with args \['x'\]"):
        changes.payload_of_message("turbo_async.broadcast", ["x"], {})
