"""``turbo_async.testing``: the helpers users test their own streams with.

These run in the test process: the capture runs the pipeline inline (no Celery) and records the
frames instead of sending them; where a test checks delivery it uses Channels' in-memory layer.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.test import TestCase

from tests.testapp.factories import MessageFactory, RoomFactory, TagFactory
from tests.testapp.models import Plain
from tests.testapp.streams import MessageStream, RoomListStream, RoomStream, TagListStream
from turbo_async import recording
from turbo_async.testing import (
    BroadcastRecorder,
    Frame,
    assert_broadcasts,
    assert_no_broadcasts,
    capture_broadcasts,
    parse_frames,
)

APPEND = '<turbo-stream action="append" target="messages"><template><p>Hi</p></template></turbo-stream>'
REMOVE = '<turbo-stream action="remove" targets=".old"><template></template></turbo-stream>'


# -- parse_frames ------------------------------------------------------------------------------


def test_parse_frames_reads_action_target_and_html() -> None:
    [frame] = parse_frames(APPEND, "testapp:RoomStream", "group-1")
    assert frame == Frame(
        stream="testapp:RoomStream", group="group-1", action="append", target="messages",
        targets=None, html="<p>Hi</p>", markup=APPEND,
    )


def test_parse_frames_splits_a_batch_in_order() -> None:
    frames = parse_frames(APPEND + REMOVE)
    assert [(f.action, f.target, f.targets) for f in frames] == [
        ("append", "messages", None), ("remove", None, ".old"),
    ]
    assert frames[1].html == ""


def test_parse_frames_unescapes_attributes_and_keeps_extra_ones() -> None:
    [frame] = parse_frames(
        '<turbo-stream action="replace" method="morph" targets="a[data-x=&quot;1&quot;]">'
        "<template>x</template></turbo-stream>"
    )
    assert frame.targets == 'a[data-x="1"]'
    assert frame.attributes["method"] == "morph"


def test_parse_frames_reads_refresh_without_template() -> None:
    [frame] = parse_frames('<turbo-stream action="refresh"></turbo-stream>')
    assert (frame.action, frame.target, frame.html) == ("refresh", None, "")


def test_parse_frames_refuses_an_unclosed_element() -> None:
    with pytest.raises(ValueError, match="Unclosed <turbo-stream>"):
        parse_frames('<turbo-stream action="append" target="x"><template>')


# -- capture_broadcasts ------------------------------------------------------------------------


@pytest.mark.django_db
def test_capture_runs_the_hook_on_commit_inside_the_test_transaction() -> None:
    room = RoomFactory()
    with capture_broadcasts() as broadcasts:
        message = MessageFactory(room=room, text="Hello")
    [frame] = broadcasts.frames
    assert (frame.stream, frame.group) == (RoomStream.stream_name, room.stream.broadcastable_stream_name)
    assert (frame.action, frame.target) == ("append", "messages")
    assert f'id="message-{message.pk}"' in frame.html
    assert "Hello" in frame.html


@pytest.mark.django_db
def test_capture_keeps_set_up_changes_apart_from_the_change_under_test() -> None:
    """The test's transaction never commits: without the split, the edit below would merge with
    the row's creation and broadcast an append."""
    message = MessageFactory(text="before")
    with capture_broadcasts() as broadcasts:
        message.text = "after"
        message.save()
    broadcasts.assert_broadcasts(message.room, count=1, action="replace", target=f"message-{message.pk}")


@pytest.mark.django_db
def test_capture_needs_no_broker(settings: Any) -> None:
    """Celery is not eager and its broker is a closed port: the capture never touches it."""
    from workers import app

    app.conf.task_always_eager = False
    broker_url = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:9/0"
    try:
        with capture_broadcasts() as broadcasts:
            MessageFactory()
    finally:
        app.conf.task_always_eager = True
        app.conf.broker_url = broker_url
    assert len(broadcasts) == 1


@pytest.mark.django_db
def test_capture_records_nothing_for_a_rolled_back_transaction() -> None:
    room = RoomFactory()
    with capture_broadcasts() as broadcasts:
        try:
            with transaction.atomic():
                MessageFactory(room=room)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    broadcasts.assert_no_broadcasts()


@pytest.mark.django_db
def test_capture_does_not_send_to_the_layer_by_default() -> None:
    room = RoomFactory()
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(room.stream.broadcastable_stream_name, channel)
    with capture_broadcasts():
        MessageFactory(room=room)
    with capture_broadcasts(deliver=True):
        MessageFactory(room=room, text="delivered")
    # Only the second frame reached the group: the first one would be received first.
    assert "delivered" in async_to_sync(layer.receive)(channel)["data"]


@pytest.mark.django_db
def test_capture_of_one_stream_keeps_only_its_frames() -> None:
    room, other = RoomFactory(), RoomFactory()
    with capture_broadcasts(room) as broadcasts:
        MessageFactory(room=other)
        MessageFactory(room=room)
    assert [frame.group for frame in broadcasts] == [room.stream.broadcastable_stream_name]


@pytest.mark.django_db
def test_capture_records_a_delete_rebuilt_from_its_snapshot() -> None:
    message = MessageFactory()
    message_id = message.pk
    with capture_broadcasts() as broadcasts:
        message.delete()
    broadcasts.assert_broadcasts(message.room, count=1, action="remove", target=f"message-{message_id}")


@pytest.mark.django_db
def test_capture_runs_stream_later_inline() -> None:
    room = RoomFactory(name="Lobby")
    with capture_broadcasts() as broadcasts:
        RoomListStream().add(room)
    [frame] = broadcasts.assert_broadcasts(RoomListStream(), count=1, action="append", target="rooms")
    assert "Lobby" in frame.html


@pytest.mark.django_db
def test_capture_records_explicit_sends_outside_hooks() -> None:
    with capture_broadcasts() as broadcasts:
        TagListStream().update(text="x", id="tags")
    broadcasts.assert_broadcasts(TagListStream, count=1, action="update")


@pytest.mark.django_db
def test_capture_lets_hook_exceptions_reach_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, message: Any, created: bool, *args: Any, **kwargs: Any) -> None:
        raise LookupError("hook failed")

    monkeypatch.setattr(MessageStream, "on_save", broken)
    with pytest.raises(LookupError, match="hook failed"), capture_broadcasts():
        MessageFactory()


@pytest.mark.django_db
def test_capture_without_on_commit_needs_the_callbacks_run(
    django_capture_on_commit_callbacks: Any,
) -> None:
    room = RoomFactory()
    with capture_broadcasts(on_commit=False) as broadcasts:
        with django_capture_on_commit_callbacks(execute=True):
            MessageFactory(room=room)
            assert broadcasts.frames == []  # the test's transaction has not "committed" yet
        broadcasts.assert_broadcasts(room, count=1)


@pytest.mark.django_db(transaction=True)
def test_capture_with_real_commits() -> None:
    room = RoomFactory()
    with capture_broadcasts(on_commit=False) as broadcasts:
        MessageFactory(room=room)  # autocommit: the hook runs right after the INSERT commits
        assert len(broadcasts) == 1


@pytest.mark.django_db
def test_pipeline_is_back_to_celery_after_the_capture() -> None:
    with capture_broadcasts():
        assert recording.active()
    assert not recording.active()


# -- assertions --------------------------------------------------------------------------------


def recorder_with(*markups: tuple[str, str, str]) -> BroadcastRecorder:
    recorder = BroadcastRecorder()
    for stream, group, markup in markups:
        recorder.record(group, {"stream": stream, "data": markup})
    return recorder


def test_assert_broadcasts_reports_what_was_broadcast_when_the_count_differs() -> None:
    recorder = recorder_with(("testapp:RoomStream", "g1", APPEND))
    with pytest.raises(AssertionError) as error:
        recorder.assert_broadcasts("testapp:RoomStream", count=2)
    assert str(error.value) == (
        "Expected 2 frame(s) on 'testapp:RoomStream', but 1 were broadcast. Broadcast:\n"
        "  append target='messages' on testapp:RoomStream (g1)"
    )


def test_assert_broadcasts_without_count_needs_at_least_one() -> None:
    recorder = recorder_with(("testapp:RoomStream", "g1", APPEND))
    with pytest.raises(AssertionError, match=r"Expected frames on any stream with action='remove'"):
        recorder.assert_broadcasts(action="remove")


def test_assert_broadcasts_filters_by_target_targets_and_contents() -> None:
    recorder = recorder_with(("a:S", "g1", APPEND), ("a:S", "g1", REMOVE))
    assert len(recorder.assert_broadcasts(target="messages", contains="Hi", count=1)) == 1
    assert len(recorder.assert_broadcasts(targets=".old", count=1)) == 1
    recorder.assert_no_broadcasts(contains="Bye")


def test_assert_no_broadcasts_fails_with_the_frames() -> None:
    recorder = recorder_with(("a:S", "g1", APPEND))
    with pytest.raises(AssertionError, match="Expected 0 frame"):
        recorder.assert_no_broadcasts("a:S")


def test_assert_no_broadcasts_without_a_stream_means_nothing_at_all() -> None:
    recorder_with().assert_no_broadcasts()
    with pytest.raises(AssertionError, match="Expected 0 frame"):
        recorder_with(("a:S", "g1", APPEND)).assert_no_broadcasts()


@pytest.mark.django_db
def test_assert_broadcasts_tells_streams_of_two_rows_apart() -> None:
    room, other = RoomFactory(), RoomFactory()
    with capture_broadcasts() as broadcasts:
        MessageFactory(room=room)
    broadcasts.assert_broadcasts(room, count=1)
    broadcasts.assert_no_broadcasts(other)
    broadcasts.assert_broadcasts(RoomStream, count=1)  # the class: any room


@pytest.mark.django_db
def test_a_model_without_stream_is_refused() -> None:
    plain = Plain.objects.create(name="x")
    with pytest.raises(TypeError, match="Plain has no stream: define a ModelStream for it"):
        recorder_with().assert_broadcasts(plain)


@pytest.mark.django_db
def test_assert_broadcasts_block_yields_the_matching_frames() -> None:
    room = RoomFactory()
    with assert_broadcasts(room, count=1, action="append") as frames:
        MessageFactory(room=room, text="Hello")
    assert "Hello" in frames[0].html


@pytest.mark.django_db
def test_assert_broadcasts_block_fails_when_nothing_is_sent() -> None:
    room = RoomFactory()
    with pytest.raises(AssertionError, match="but none were broadcast"), assert_broadcasts(room):
        room.name = "renamed"
        room.save()  # RoomStream has no hooks


@pytest.mark.django_db
def test_assert_no_broadcasts_block() -> None:
    tag = TagFactory()
    with assert_no_broadcasts(tag):  # TagStream sends to TagListStream, not to the tag itself
        tag.label = "new"
        tag.save()
    with pytest.raises(AssertionError, match="Expected 0 frame"), assert_no_broadcasts(TagListStream):
        tag.save()


# -- pytest fixture ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_turbo_broadcasts_fixture_records_the_whole_test(
    turbo_broadcasts: BroadcastRecorder, django_capture_on_commit_callbacks: Any
) -> None:
    room = RoomFactory()
    with django_capture_on_commit_callbacks(execute=True):
        MessageFactory(room=room)
    turbo_broadcasts.assert_broadcasts(room, count=1, action="append", target="messages")
    assert recording.active()


# -- Django's TestCase -------------------------------------------------------------------------


class CaptureInTestCaseTests(TestCase):
    """The same helpers in a plain Django ``TestCase`` (one transaction per test)."""

    def test_capture_runs_on_commit_callbacks_itself(self) -> None:
        room = RoomFactory()
        with assert_broadcasts(room, count=1, action="append"):
            MessageFactory(room=room)

    def test_capture_inside_capture_on_commit_callbacks(self) -> None:
        room = RoomFactory()
        with capture_broadcasts(on_commit=False) as broadcasts:
            with self.captureOnCommitCallbacks(execute=True):
                message = MessageFactory(room=room)
                message.text = "edited"
                message.save()  # one task per object: created sticks, so one append
        broadcasts.assert_broadcasts(room, count=1, action="append", contains="edited")
