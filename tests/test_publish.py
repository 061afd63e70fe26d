"""``turbo_async.publish``: queue the one Celery task of committed changes and ``stream.later``
actions (a single change is a batch of one), and the delayed task of a debounced refresh with the
same options; never raise because the broker is down.

The broadcast task's ``apply_async`` is the seam: the ``published`` fixture (tests/conftest.py)
records what it would send, other tests make it fail as a broker that is down does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import override_settings

from tests.conftest import Published
from tests.testapp.factories import MessageFactory
from tests.testapp.models import Message
from turbo_async import conf, publish, tasks, worker
from turbo_async.changes import BATCH_TASK, Change, StreamAction
from turbo_async.refreshes import REFRESH_TASK

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def apply_async(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.broadcast, "apply_async", apply_async)


@pytest.fixture
def broadcasts_run_here(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The payloads of the task bodies that ran in this process (the task itself is left as it is)."""
    ran: list[tuple[Any, ...]] = []

    def broadcast(payload: list[Any]) -> dict[str, Any]:
        ran.append(tuple(payload))
        return {"frames": 0, "streams": 0}

    monkeypatch.setattr(worker, "broadcast", broadcast)
    return ran


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
        f"could not queue the broadcast of testapp.message pk={message.pk} (save): "
        "ConnectionRefusedError: broker down"
    ) in caplog.text


def test_publish_never_raises_on_a_broker_error_and_logs_label_and_pk_and_the_broker(
    broker_down: None, broadcasts_run_here: list[Any], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, settings: Any,
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with caplog.at_level(logging.ERROR, logger="turbo_async"):
        publish.publish(Change("testapp.message", 42, "save", True))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            "could not queue the broadcast of testapp.message pk=42 (save): "
            f"ConnectionRefusedError: broker down; tried {settings.CELERY_BROKER_URL} (the "
            "CELERY_BROKER_URL setting, read by the Celery app 'workers')",
        )
    ]
    assert broadcasts_run_here == []  # "log" (the default) only logs


def test_on_publish_error_inline_runs_the_broadcast_in_this_process(
    broker_down: None, broadcasts_run_here: list[Any]
) -> None:
    with override_settings(TURBO_ASYNC={"ON_PUBLISH_ERROR": "inline"}):
        publish.publish(Change("testapp.message", 42, "save", True))
    assert broadcasts_run_here == [({"v": 2, "label": "testapp.message", "pk": 42, "event": "save", "created": True},)]


def test_a_failing_inline_broadcast_is_logged_not_raised(
    broker_down: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broadcast(payload: list[Any]) -> dict[str, Any]:
        raise LookupError("hook failed")

    monkeypatch.setattr(worker, "broadcast", broadcast)
    with override_settings(TURBO_ASYNC={"ON_PUBLISH_ERROR": "inline"}), caplog.at_level(
        logging.ERROR, logger="turbo_async"
    ):
        publish.publish(Change("testapp.message", 42, "save", True))
    assert "inline broadcast of testapp.message pk=42 (save) failed" in caplog.text
    assert "LookupError: hook failed" in caplog.text


def test_default_queue_unless_configured(published: Published) -> None:
    from django.test import override_settings

    MessageFactory()
    assert "queue" not in published[0]["options"]
    with override_settings(TURBO_ASYNC={"QUEUE": "broadcasts"}):
        MessageFactory()
    assert published[1]["options"]["queue"] == "broadcasts"


def test_the_task_carries_the_hooks_flower_name_and_argsrepr(published: Published) -> None:
    publish.publish(Change("testapp.message", 42, "save", True, shadow="testapp.MessageStream.on_save"))
    [call] = published
    assert call["args"] == [[{"v": 2, "label": "testapp.message", "pk": 42, "event": "save", "created": True}]]
    assert call["options"]["shadow"] == "testapp.MessageStream.on_save"
    assert call["options"]["argsrepr"] == "('testapp.message', 42, 'save', True)"


def test_publishing_retries_as_the_settings_say() -> None:
    settings = conf.load({"PUBLISH_MAX_RETRIES": 4, "PUBLISH_RETRY_INTERVAL": 0.5})
    assert publish.options("", settings) == {
        "retry": True,
        "retry_policy": {"max_retries": 4, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
    }


def test_a_lone_change_is_a_task_of_one_item() -> None:
    assert publish.message([(Change("testapp.message", 5, "save", True), "default")]) == (
        BATCH_TASK, ([{"v": 2, "label": "testapp.message", "pk": 5, "event": "save", "created": True}],), {},
    )


def test_changes_and_actions_of_several_databases_go_in_one_task_in_order() -> None:
    action = StreamAction("testapp:RoomListStream", [], {}, "append", {"id": "rooms", "text": "x"})
    name, (items,), kwargs = publish.message([(Change("testapp.message", 5, "save"), "other"), (action, "default")])
    assert (name, kwargs) == (BATCH_TASK, {})
    assert items == [
        {"v": 2, "label": "testapp.message", "pk": 5, "event": "save", "created": False, "using": "other"},
        {"v": 2, "stream": "testapp:RoomListStream", "args": [], "kwargs": {}, "action": "append",
         "options": {"id": "rooms", "text": "x"}},
    ]


def test_a_refresh_is_scheduled_with_the_options_of_every_broadcast(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Queue, publish retries, Flower name, and the commit time the lag metric starts from."""
    sent: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(
        conf.celery_app().tasks[REFRESH_TASK], "apply_async",
        lambda args, **options: sent.append((args, options)),
    )
    settings.TURBO_ASYNC = {"QUEUE": "broadcasts", "METRICS": True, "STATUS_INTERVAL": 0}
    publish.schedule(REFRESH_TASK, ["g", "testapp:RoomStream"], "testapp.RoomStream.refresh.debounced", 0.4, 1234.5)
    [(args, options)] = sent
    assert args == ("g", "testapp:RoomStream")
    expected = publish.options("testapp.RoomStream.refresh.debounced", conf.get())
    assert {key: options[key] for key in expected} == expected and expected["queue"] == "broadcasts"
    assert options["countdown"] == 0.4 and options["headers"] == {"turbo_async_committed": 1234.5}


def test_commits_publish_by_themselves_in_eager_mode() -> None:
    assert publish.publishes_now()  # tests/settings.py: CELERY_TASK_ALWAYS_EAGER in this process


def test_commits_hand_over_to_the_outbox_when_not_eager() -> None:
    app = tasks.broadcast.app
    app.conf.task_always_eager = False
    try:
        assert not publish.publishes_now()
    finally:
        app.conf.task_always_eager = True


# -- a batch's name and args in Flower ---------------------------------------------------------


def test_a_batch_is_named_after_its_hooks_each_once_in_commit_order() -> None:
    names = ["chat.MessageStream.on_save", "chat.RoomListStream.refresh", "chat.MessageStream.on_save"]
    assert publish.batch_name(names) == "chat.MessageStream.on_save x2 + chat.RoomListStream.refresh"


def test_a_batch_of_one_hook_is_named_after_it_with_the_count() -> None:
    assert publish.batch_name(["chat.MessageStream.on_save"] * 12) == "chat.MessageStream.on_save x12"


def test_a_batch_name_past_its_limit_counts_the_hooks_it_leaves_out() -> None:
    names = [f"app.Stream{n}.on_save" for n in range(20)]
    name = publish.batch_name(names)
    assert len(name) <= publish.BATCH_NAME_MAX_LENGTH
    shown = name.split(" + ")
    assert shown[-1] == f"{20 - len(shown) + 1} more"
    assert shown[:-1] == names[: len(shown) - 1]


def test_a_batch_name_always_shows_its_first_hook_whole() -> None:
    assert publish.batch_name(["a.VeryLongStream.on_save", "b.B.on_save"], limit=10) == (
        "a.VeryLongStream.on_save + 1 more"
    )


def test_a_batch_lists_each_change_and_action_by_what_identifies_it() -> None:
    items: list[tuple[Change | StreamAction, str]] = [
        (Change("chat.message", 42, "save", True, shadow="chat.MessageStream.on_save"), "default"),
        (StreamAction("chat:RoomListStream", [], {}, "refresh", {}, shadow="chat.RoomListStream.refresh"), "default"),
        (Change("chat.message", "a-b", "delete", snapshot={"id": "a-b"}), "other"),
        (StreamAction("chat:RoomStream", [5], {"tab": "all"}, "append", {"text": "x", "id": "m"}), "default"),
    ]
    assert publish.describe_batch(items) == (
        "('chat.message', 42, 'save', True); ('chat:RoomListStream', [], 'refresh'); "
        "('chat.message', 'a-b', 'delete', False); ('chat:RoomStream', [5], {'tab': 'all'}, 'append')"
    )


def test_a_full_batch_of_uuid_pks_is_listed_whole() -> None:
    """Every row of a batch of BATCH_MAX_SIZE changes can be found by searching Flower's args."""
    pks = [f"{n:08d}-9c1a-4b6e-8d3f-0123456789ab" for n in range(conf.get().BATCH_MAX_SIZE)]
    items: list[tuple[Change | StreamAction, str]] = [
        (Change("chat.message", pk, "save"), "default") for pk in pks
    ]
    text = publish.describe_batch(items)
    assert all(f"('chat.message', '{pk}', 'save', False)" in text for pk in pks)


def test_a_batch_past_the_args_limit_counts_the_items_it_leaves_out() -> None:
    items: list[tuple[Change | StreamAction, str]] = [
        (Change("chat.message", n, "save"), "default") for n in range(100)
    ]
    text = publish.describe_batch(items, limit=200)
    assert len(text) <= 200
    listed = text.split("; ")
    assert listed[-1] == f"and {100 - len(listed) + 1} more"
    assert listed[0] == "('chat.message', 0, 'save', False)"
