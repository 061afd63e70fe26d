"""What users are promised when things break (docs/guarantees.rst), proven with real processes.

These tests stop, freeze and kill services, so they run on services of their own (``stack``): a
broker Redis, a channel-layer Redis, a Celery worker and a uvicorn, all real processes. The
session's Redis, worker and uvicorn are never touched. The test process publishes to the stack's
broker for the length of this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import LazySettings
from django.db import transaction

from tests.conftest import LOG_DIR, current_layer, layer_backend, layer_env
from tests.services import (
    FaultStack,
    LogSince,
    StreamClient,
    Uvicorn,
    subprocess_env,
    subscribed,
)
from tests.testapp.factories import MessageFactory, ProbeFactory, RoomFactory
from tests.testapp.models import Message, Probe
from turbo_async import outbox, suppress

pytestmark = [pytest.mark.integration, pytest.mark.layer]

# The stack's worker retries quickly so the tests stay short: backoffs of 0.5 to 1 s, for MAX_AGE s.
MAX_AGE = 3.0
WORKER_SETTINGS = {"DELIVERY_MAX_AGE": MAX_AGE, "DELIVERY_RETRY_BACKOFF_MAX": 1}


def assert_no_errors(log: LogSince) -> None:
    text = log.text()
    assert "ERROR" not in text and "Traceback" not in text, text


def layer_host(url: str) -> dict[str, Any]:
    """A channels_redis host as tests/settings.py (and the docs) configure it."""
    return {"address": url, "socket_timeout": None}


class LayerListener:
    """One channel of the real channel layer (this run's: ``TURBO_TEST_LAYER``), member of one
    stream's group.

    It keeps its own event loop: channels_redis keeps a connection pool per loop (and the pub/sub
    layer reads, and reconnects, only while that loop runs).
    """

    def __init__(self, url: str, group: str, layer: str | None = None) -> None:
        from django.utils.module_loading import import_string

        self.group = group
        self.loop = asyncio.new_event_loop()
        backend = import_string(layer_backend(layer or current_layer()))
        self.layer = backend(hosts=[layer_host(url)])
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(group, self.channel))

    def receive(self, timeout: float = 20) -> dict[str, Any]:
        from turbo_async.layers import layer_call

        # layer_call: once more if a Redis restart broke the pooled connection.
        return self.loop.run_until_complete(
            asyncio.wait_for(layer_call(self.layer.receive, self.channel), timeout)
        )

    def wait_subscribed(self, redis: Any, timeout: float = 20) -> None:
        """Pub/sub: until Redis counts this listener's connection among the group's subscribers
        again (redis-py resubscribes by itself once the layer's loop runs)."""
        group_channel = f"asgi__group__{self.group}"

        async def poll() -> None:
            while dict(redis.pubsub_numsub(group_channel)).get(group_channel.encode(), 0) < 1:
                await asyncio.sleep(0.05)

        self.loop.run_until_complete(asyncio.wait_for(poll(), timeout))

    def close(self) -> None:
        from channels_redis.core import RedisChannelLayer

        if isinstance(self.layer, RedisChannelLayer):
            self.loop.run_until_complete(self.layer.close_pools())
        else:
            self.loop.run_until_complete(self.layer.flush())
        self.loop.close()


def wait_until(condition: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met after {timeout}s")


@pytest.fixture(scope="module")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """The layer's Redis keeps an append-only file, as a production Redis would: group
    memberships survive its restart."""
    services = FaultStack(
        tmp_path_factory.mktemp("failures"), LOG_DIR, "failures", WORKER_SETTINGS, ("--appendonly", "yes")
    )
    with services.serving():
        yield services


@pytest.fixture
def live_stack(stack: FaultStack, transactional_db: None) -> Iterator[FaultStack]:
    """Committed rows, published to the stack's broker (Celery eager mode off)."""
    from workers import app

    app.conf.task_always_eager = False
    try:
        yield stack
    finally:
        app.conf.task_always_eager = True
        for server in (stack.broker, stack.layer):  # a failed test must not leave one down
            if server.process is None:
                server.start()


# -- broker down at commit --------------------------------------------------------------------


def test_save_succeeds_and_logs_label_and_pk_when_the_broker_is_down(
    live_stack: FaultStack, caplog: pytest.LogCaptureFixture
) -> None:
    with suppress():
        room = RoomFactory()
    live_stack.broker.stop()
    started = time.monotonic()
    message = MessageFactory(room=room)
    elapsed = time.monotonic() - started
    # The save only handed the change to the outbox; its thread meets the dead broker and waits.
    wait_until(lambda: f"the broadcast of testapp.message pk={message.pk} (save) waits" in caplog.text,
               what="the outbox's warning")
    assert not outbox.flush(timeout=0.5)
    live_stack.broker.start()
    assert outbox.flush(timeout=20)
    assert Message.objects.filter(pk=message.pk).exists()
    assert "the broker is reachable again" in caplog.text
    assert elapsed < 10, f"the save hung for {elapsed:.1f}s"


def test_save_returns_when_the_broker_hangs(
    live_stack: FaultStack, caplog: pytest.LogCaptureFixture
) -> None:
    # A frozen Redis accepts connections and never answers. The save does not wait for it (the
    # outbox publishes); the transport's socket_timeout (tests/settings.py: 2 s,
    # docs/guarantees.rst) bounds each of the outbox's attempts, and it tries again.
    with suppress():
        room = RoomFactory()
    assert live_stack.broker.process is not None
    live_stack.broker.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        message = MessageFactory(room=room)
        elapsed = time.monotonic() - started
        wait_until(lambda: f"testapp.message pk={message.pk} (save) waits" in caplog.text, timeout=30,
                   what="the outbox's warning")
    finally:
        live_stack.broker.process.send_signal(signal.SIGCONT)
    assert outbox.flush(timeout=30)
    assert Message.objects.filter(pk=message.pk).exists()
    assert elapsed < 20, f"the save hung for {elapsed:.1f}s"


# The transport's socket_timeout in tests/settings.py; redis-py sends a timed-out command once more.
BROKER_SOCKET_TIMEOUT = 2


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_without_the_outbox_the_save_returns_within_the_publish_bound(
    live_stack: FaultStack, settings: LazySettings, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """``PUBLISH_IN_BACKGROUND: False``: the save publishes itself, at most ``PUBLISH_MAX_RETRIES +
    1`` attempts (3) with ``PUBLISH_MAX_RETRIES * PUBLISH_RETRY_INTERVAL`` (0.4 s) between them. A
    stopped Redis refuses at once; a frozen one (SIGSTOP) holds each attempt for the transport's
    socket_timeout, twice. The bounds docs/guarantees.rst states, plus 5 s of slack; run with -s to
    see the time measured."""
    settings.TURBO_ASYNC = {"PUBLISH_IN_BACKGROUND": False}
    with suppress():
        room = RoomFactory()
    attempts, waits = 3, 0.4
    bound = waits + (attempts * 2 * BROKER_SOCKET_TIMEOUT if fault == "frozen" else 0) + 5
    if fault == "stopped":
        live_stack.broker.stop()
    else:
        assert live_stack.broker.process is not None
        live_stack.broker.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        message = MessageFactory(room=room)
        elapsed = time.monotonic() - started
    finally:
        if fault == "frozen":
            assert live_stack.broker.process is not None
            live_stack.broker.process.send_signal(signal.SIGCONT)
        else:
            live_stack.broker.start()
    print(f"\nbroker {fault}, no outbox: the save returned after {elapsed:.2f} s (bound {bound:.1f} s)")
    assert Message.objects.filter(pk=message.pk).exists()
    assert f"could not queue the broadcast of testapp.message pk={message.pk}" in caplog.text
    assert elapsed < bound, f"the save took {elapsed:.1f}s"


def test_inline_policy_runs_the_hook_in_the_saving_process_when_the_broker_is_down(
    live_stack: FaultStack, settings: LazySettings
) -> None:
    # The saving process sends through the real Redis channel layer (not the in-memory one).
    settings.TURBO_ASYNC = {"ON_PUBLISH_ERROR": "inline"}
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": layer_backend(current_layer()),  # the stack's web process reads this one
            "CONFIG": {"hosts": [layer_host(live_stack.layer.url)]},
        }
    }
    with suppress():
        room = RoomFactory()
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        live_stack.broker.stop()
        message = MessageFactory(room=room, text="sent inline")
        frames = client.receive_frames()
    live_stack.broker.start()
    assert frames.startswith('<turbo-stream action="append" target="messages">')
    assert f'id="message-{message.pk}"' in frames and "sent inline" in frames


def test_broadcasts_flow_again_after_the_broker_restarts(live_stack: FaultStack) -> None:
    with suppress():
        room = RoomFactory()
    worker_log = LogSince(live_stack.worker)
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        MessageFactory(room=room, text="before")  # the worker is connected (and the web is)
        assert "before" in client.receive_frames(timeout=30)
        # Stop the broker only once the worker has acknowledged that task: with Celery 5.7 and
        # kombu 5.7 a worker that loses its Redis broker while holding an unacknowledged task
        # exits ("Unrecoverable error: AttributeError"; docs/guarantees.rst).
        wait_until(lambda: live_stack.broker.client().hlen("unacked") == 0, what="the ack")
        live_stack.broker.stop()
        MessageFactory(room=room, text="saved while down")
        assert not outbox.flush(timeout=1)  # the outbox holds it while Redis is down
        live_stack.broker.start()
        # Same test process, same worker, same uvicorn: nothing was restarted but Redis.
        MessageFactory(room=room, text="after the restart")
        frames = client.receive_frames(timeout=30)
        if "after the restart" not in frames:  # one batch, or two messages
            frames += client.receive_frames(timeout=30)
    assert frames.index("saved while down") < frames.index("after the restart")  # commit order
    assert "Connection to broker lost" in worker_log.text()


# -- channel layer down while a task runs -------------------------------------------------------


def test_task_retries_while_the_channel_layer_is_down_and_delivers_after_it_returns(
    live_stack: FaultStack,
) -> None:
    with suppress():
        room = RoomFactory()
    listener = LayerListener(live_stack.layer.url, room.stream.broadcastable_stream_name)
    worker_log = LogSince(live_stack.worker)
    group = room.stream.broadcastable_stream_name
    try:
        live_stack.layer.stop()
        message = MessageFactory(room=room, text="waited for the layer")
        worker_log.wait_for("channel layer unreachable")
        live_stack.layer.start()
        if current_layer() == "core":
            # The group's member list is in Redis (append-only file): the retry reaches it.
            received = listener.receive()["data"]
        else:
            # Pub/sub stores nothing: a retry that publishes before the listener's connection
            # is back reaches nobody. Delivered means published once Redis is back, and kept in
            # the stream's history, which a page resubscribing with its offset gets replayed.
            from turbo_async import history

            # Until the retry has numbered its batch (another task's " succeeded" line in the log
            # is no sign of this one's).
            received = ""
            deadline = time.monotonic() + 20
            while "waited for the layer" not in received and time.monotonic() < deadline:
                entries = live_stack.layer.client().xrevrange(history.history_key(group), count=1)
                received = entries[0][1][b"d"].decode() if entries else ""
                time.sleep(0.1)
            # And the listener's subscription comes back by itself: live frames flow again.
            listener.wait_subscribed(live_stack.layer.client())
            MessageFactory(room=room, text="live again")
            assert "live again" in listener.receive()["data"]
    finally:
        listener.close()
    assert f'id="message-{message.pk}"' in received
    assert "waited for the layer" in received
    assert f"testapp.message pk={message.pk} (save)" in worker_log.text()


def test_web_subscribes_and_receives_again_after_the_channel_layer_restarts(
    live_stack: FaultStack,
) -> None:
    with suppress():
        room = RoomFactory()
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        MessageFactory(room=room, text="before")  # the web's pooled layer connections are in use
        assert "before" in client.receive_frames()
    live_stack.layer.stop()
    live_stack.layer.start()
    # The first command on each stale pooled connection fails; the consumer tries once more on
    # a fresh one instead of failing the subscription (no retry_on_error in the layer's config).
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        MessageFactory(room=room, text="after")
        assert "after" in client.receive_frames()


def test_past_the_max_age_the_task_gives_up_its_frames_and_its_pages_are_told_to_refresh(
    live_stack: FaultStack,
) -> None:
    """The layer stays away longer than ``DELIVERY_MAX_AGE``: the frames are given up (ERROR, with
    label and pk) and, once the layer answers, the stream gets a new epoch and a refresh frame
    numbered in it, which a subscribed socket receives: its page refreshes."""
    with suppress():
        room = RoomFactory()
    worker_log = LogSince(live_stack.worker)
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        MessageFactory(room=room, text="before")
        before = client.receive()
        live_stack.layer.stop()
        try:
            message = MessageFactory(room=room)
            given_up = worker_log.wait_for("gave up on the frames of", timeout=MAX_AGE + 20)
        finally:
            live_stack.layer.start()
        assert f"gave up on the frames of testapp.message pk={message.pk} (save)" in given_up
        assert "retry 1 in" in given_up  # retried first, while the change was young
        told = worker_log.wait_for("its pages were told to refresh (new epoch", timeout=20)
        assert "frames of testapp:RoomStream were lost" in told
        while True:
            reply = client.receive(timeout=20)
            if reply.get("type") == "reset" or 'action="refresh"' in reply.get("data", ""):
                break
        if "data" in reply:  # the refresh frame, in the stream's new epoch
            assert reply["epoch"] != before["epoch"] and reply["offset"] == 1


def test_hook_that_raises_fails_its_task_once_with_a_traceback(live_stack: FaultStack) -> None:
    worker_log = LogSince(live_stack.worker)
    probe = ProbeFactory(fail=True)
    text = worker_log.wait_for(f"RuntimeError: probe {probe.pk} fails on purpose")
    assert "testapp.ProbeStream.on_save[" in text and "raised unexpected" in text
    assert "Traceback (most recent call last)" in text
    # A retry would come within DELIVERY_RETRY_BACKOFF_MAX (1 s here); wait twice that.
    time.sleep(2)
    probe.refresh_from_db()
    assert probe.runs == 1
    assert worker_log.text().count("raised unexpected") == 1


# -- rows that are gone -------------------------------------------------------------------------


@pytest.mark.database
def test_cascade_delete_of_a_room_logs_no_error_and_the_worker_stays_healthy(
    live_stack: FaultStack,
) -> None:
    with suppress():
        room = RoomFactory()
        messages = MessageFactory.create_batch(2, room=room)
        other_room = RoomFactory()
    worker_log = LogSince(live_stack.worker)
    room.delete()  # deletes both messages: two on_delete tasks whose message.room is gone
    for message in messages:
        worker_log.wait_for(f"testapp.message pk={message.pk} delete skipped")
    with subscribed(live_stack.web, other_room.stream.signed_stream_name) as client:
        MessageFactory(room=other_room, text="still working")
        assert "still working" in client.receive_frames()
    assert_no_errors(worker_log)


@pytest.mark.database
def test_row_deleted_before_the_worker_runs_is_skipped_without_error(live_stack: FaultStack) -> None:
    with suppress():
        room = RoomFactory()
    worker_log = LogSince(live_stack.worker)
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        ProbeFactory(sleep=1)  # keeps the single worker process busy while the row comes and goes
        message = MessageFactory(room=room)
        message_id = message.pk
        message.delete()
        frames = client.receive_frames()
    # The save's task found no row and sent nothing; the delete's task removed the element.
    assert frames == (
        f'<turbo-stream action="remove" target="message-{message_id}"><template></template></turbo-stream>'
    )
    assert f"testapp.message pk={message_id} is gone" in worker_log.text()
    assert_no_errors(worker_log)


# -- web process killed -------------------------------------------------------------------------

GROUP_EXPIRY = int(os.environ.get("TURBO_TEST_GROUP_EXPIRY", "4"))
KILLED_SOCKETS = 20


def group_members(redis: Any, layer: str, group: str) -> int:
    """How many subscribers the layer's Redis writes a frame of ``group`` for: pub/sub, the
    connections subscribed to the group's channel; core, the group's members whose last renewal
    is younger than ``group_expiry``. One per web process either way (its fan-out channel)."""
    if layer == "pubsub":
        channel = f"asgi__group__{group}"
        return int(dict(redis.pubsub_numsub(channel)).get(channel.encode(), 0))
    return int(redis.zcount(f"asgi:group:{group}", time.time() - GROUP_EXPIRY, "+inf"))


def test_a_killed_web_process_stops_receiving_writes_in_bounded_time(
    stack: FaultStack, each_layer: str, transactional_db: None
) -> None:
    """Two web processes with sockets on one stream; one is SIGKILLed (no group_discard runs).
    Pub/sub: Redis drops the dead connection's subscriptions at once. Core: its members stay
    until ``group_expiry`` (GROUP_EXPIRY s here; the docs advise 60 s with the 10 s heartbeat),
    while the live process's sockets renew theirs every heartbeat and stay."""
    with suppress():
        room = RoomFactory()
    group = room.stream.broadcastable_stream_name
    env = stack.env | layer_env(each_layer) | {
        "TURBO_TEST_GROUP_EXPIRY": str(GROUP_EXPIRY),
        "TURBO_TEST_TURBO_ASYNC": json.dumps(WORKER_SETTINGS | {"HEARTBEAT_INTERVAL": 1}),
    }
    alive = Uvicorn(LOG_DIR, name=f"kill-alive-{each_layer}", **env)
    doomed = Uvicorn(LOG_DIR, name=f"kill-doomed-{each_layer}", **env)
    redis = stack.layer.client()
    clients: list[StreamClient] = []
    try:
        alive.start()
        doomed.start()
        name = room.stream.signed_stream_name
        for server, count in ((alive, 2), (doomed, KILLED_SOCKETS)):
            for _ in range(count):
                client = StreamClient(server.ws_url, server.origin)
                clients.append(client)
                client.subscribe(name)
                assert client.receive()["type"] == "subscribed"
        before = group_members(redis, each_layer, group)
        # One subscriber per web process under both layers: the process's fan-out channel
        # joins the group for all of its sockets (turbo_async.fanout.FanOut).
        assert before == 2, before
        doomed.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        bound = 5 if each_layer == "pubsub" else GROUP_EXPIRY + 3  # 3: a heartbeat and slack
        live = 1
        wait_until(lambda: group_members(redis, each_layer, group) == live, timeout=bound,
                   what=f"{live} subscriber(s) left")
        print(f"\n{each_layer}: the killed process's subscriptions were gone after "
              f"{time.monotonic() - killed_at:.2f} s ({before} -> {live})")
        # The live sockets stay in past the expiry (renewed), and receive frames.
        time.sleep(GROUP_EXPIRY / 2)
        assert group_members(redis, each_layer, group) == live
        _send_to_group(stack.layer.url, each_layer, group, "<still here/>")
        for client in clients[:2]:
            assert client.receive_frames() == "<still here/>"
    finally:
        for client in clients[:2]:
            client.close()
        doomed.stop()
        alive.stop()


def _send_to_group(url: str, layer: str, group: str, markup: str) -> None:
    """A group_send from this process, as a worker makes it, on a layer of its own."""
    from django.utils.module_loading import import_string

    from turbo_async.delivery import message

    async def send() -> None:
        channel_layer = import_string(layer_backend(layer))(hosts=[layer_host(url)])
        await channel_layer.group_send(group, message(group, "testapp:Room", markup))
        from channels_redis.core import RedisChannelLayer

        if isinstance(channel_layer, RedisChannelLayer):
            await channel_layer.close_pools()
        else:
            await channel_layer.flush()

    asyncio.run(send())


# -- worker killed ------------------------------------------------------------------------------


def test_task_of_a_killed_worker_is_redelivered_and_broadcast(live_stack: FaultStack) -> None:
    # Last in this module: it replaces the stack's worker with one whose visibility_timeout is
    # 2 s, so Redis hands the killed worker's unacknowledged task to it quickly.
    with suppress():
        probe = ProbeFactory(name="survived")
    with subscribed(live_stack.web, probe.stream.signed_stream_name) as client:
        probe.sleep = 60
        probe.save()
        wait_until(lambda: Probe.objects.get(pk=probe.pk).runs == 1, what="the hook started")
        live_stack.worker.kill(signal.SIGKILL)  # the whole process group, mid-hook
        assert live_stack.worker.process is not None
        live_stack.worker.process.wait(10)
        Probe.objects.filter(pk=probe.pk).update(sleep=0)
        live_stack.worker = live_stack.new_worker(
            "failures-worker-2", TURBO_TEST_VISIBILITY_TIMEOUT="2"
        )
        live_stack.worker.start()
        frames = client.receive_frames(timeout=30)
    assert frames == (
        f'<turbo-stream action="update" target="probe-{probe.pk}"><template>survived</template></turbo-stream>'
    )
    assert Probe.objects.get(pk=probe.pk).runs == 2


# -- the outbox: nothing committed is lost between the commit and the worker ---------------------

BROKER_DOWN_SECONDS = float(os.environ.get("TURBO_TEST_BROKER_DOWN_SECONDS", "8"))
MESSAGE_ID = re.compile(r'id="message-(\d+)"')

# A web process in miniature: it saves COUNT messages in ROOM (in one transaction unless
# AUTOCOMMIT), then ENDS as told: "kill" (SIGKILL right after the commit), "sigterm" or "exit".
WEB_SCRIPT = """
import os, signal, sys, django
django.setup()
from django.db import transaction
from tests.testapp.models import Message
room, count, end = int(os.environ["ROOM"]), int(os.environ["COUNT"]), os.environ["END"]
if os.environ.get("AUTOCOMMIT"):
    for i in range(count):
        Message.objects.create(room_id=room, text=f"m{i}")
else:
    with transaction.atomic():
        for i in range(count):
            Message.objects.create(room_id=room, text=f"m{i}")
print("committed", flush=True)
if end == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif end == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
sys.exit(0)
"""


def run_web_script(stack: FaultStack, room_id: int, count: int, end: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WEB_SCRIPT], capture_output=True, text=True, timeout=120,
        env=subprocess_env(**(stack.env | {"ROOM": str(room_id), "COUNT": str(count), "END": end} | env)),
    )


def collect_message_ids(client: StreamClient, count: int, timeout: float) -> set[int]:
    """The ids of the messages appended on the socket, until ``count`` are seen or time is up."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        try:
            frames = client.receive_frames(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        seen.update(int(pk) for pk in MESSAGE_ID.findall(frames))
    return seen


def test_every_change_saved_while_the_broker_is_down_reaches_the_page_after_it_returns(
    live_stack: FaultStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Default settings: the outbox thread holds the changes and retries until the broker is
    back (BROKER_DOWN_SECONDS, 8 s by default: longer than the outbox's 5 s cap on its retry wait)."""
    with suppress():
        room = RoomFactory()
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        wait_until(lambda: live_stack.broker.client().hlen("unacked") == 0, what="no unacked task")
        live_stack.broker.stop()
        saved = {MessageFactory(room=room, text=f"down {i}").pk for i in range(50)}
        time.sleep(BROKER_DOWN_SECONDS)
        live_stack.broker.start()
        returned = time.monotonic()
        seen = collect_message_ids(client, 50, timeout=60)
        print(f"\nbroker down {BROKER_DOWN_SECONDS:.0f} s: {len(seen & saved)} of 50 on the socket "
              f"{time.monotonic() - returned:.1f} s after it returned")
    assert seen == saved, f"{len(saved - seen)} of 50 lost"
    assert "the broker is reachable again after" in caplog.text
    assert outbox.flush(timeout=5)


@pytest.mark.database
def test_a_web_process_killed_after_its_commit_loses_nothing_with_the_database_outbox(
    live_stack: FaultStack,
) -> None:
    """200 saves in one transaction, SIGKILL right after the commit: the rows it wrote in that
    transaction are published by the sweep of a worker (OUTBOX_SWEEP_AFTER 1 s here)."""
    from turbo_async.models import OutboxEntry

    database = {"OUTBOX": "database", "OUTBOX_SWEEP_AFTER": 1, "OUTBOX_SWEEP_INTERVAL": 1}
    sweeper = live_stack.new_worker(
        "failures-worker-db", TURBO_TEST_TURBO_ASYNC=json.dumps(WORKER_SETTINGS | database)
    )
    with suppress():
        room = RoomFactory()
    try:
        with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
            web = run_web_script(
                live_stack, room.pk, 200, "kill", TURBO_TEST_TURBO_ASYNC=json.dumps(database)
            )
            assert web.returncode == -signal.SIGKILL and "committed" in web.stdout, web.stderr
            saved = set(Message.objects.filter(room=room).values_list("pk", flat=True))
            left = OutboxEntry.objects.count()  # what the killed process had not published
            sweeper.start()
            ready = time.monotonic()
            seen = collect_message_ids(client, 200, timeout=60)
            print(f"\nweb killed after its commit ({left} rows left): {len(seen & saved)} of 200 on the socket "
                  f"{time.monotonic() - ready:.1f} s after a sweeping worker was ready")
        assert len(saved) == 200
        assert seen == saved, f"{len(saved - seen)} of 200 lost ({left} rows were left behind)"
        wait_until(lambda: not OutboxEntry.objects.exists(), what="an empty outbox table")
    finally:
        sweeper.stop()


@pytest.mark.database
def test_an_application_on_commit_callback_that_raises_does_not_lose_our_broadcasts(
    live_stack: FaultStack, caplog: pytest.LogCaptureFixture
) -> None:
    def application_callback() -> None:
        raise RuntimeError("the application's callback failed")

    with suppress():
        room = RoomFactory()
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        with pytest.raises(RuntimeError, match="the application's callback failed"), transaction.atomic():
            transaction.on_commit(application_callback)  # before ours: Django skips the rest
            saved = {MessageFactory(room=room, text=f"c{i}").pk for i in range(10)}
        seen = collect_message_ids(client, 10, timeout=30)
    assert seen == saved
    assert "an on_commit callback registered before turbo_async's raised" in caplog.text


@pytest.mark.parametrize("end", ["exit", "sigterm"])
def test_a_process_that_exits_or_gets_sigterm_publishes_what_it_committed_first(
    live_stack: FaultStack, end: str
) -> None:
    with suppress():
        room = RoomFactory()
    with subscribed(live_stack.web, room.stream.signed_stream_name) as client:
        web = run_web_script(live_stack, room.pk, 30, end, AUTOCOMMIT="1")
        expected = -signal.SIGTERM if end == "sigterm" else 0
        assert web.returncode == expected, web.stderr
        seen = collect_message_ids(client, 30, timeout=30)
    assert seen == set(Message.objects.filter(room=room).values_list("pk", flat=True))
    assert len(seen) == 30


def test_exit_with_the_broker_down_waits_at_most_the_exit_timeout_and_logs_what_is_left(
    live_stack: FaultStack,
) -> None:
    with suppress():
        room = RoomFactory()
    live_stack.broker.stop()
    started = time.monotonic()
    web = run_web_script(
        live_stack, room.pk, 5, "exit", AUTOCOMMIT="1",
        TURBO_TEST_TURBO_ASYNC=json.dumps({"OUTBOX_EXIT_TIMEOUT": 2}),
    )
    elapsed = time.monotonic() - started
    live_stack.broker.start()
    print(f"\nexit with the broker down (OUTBOX_EXIT_TIMEOUT 2): the process took {elapsed:.1f} s in all")
    assert web.returncode == 0, web.stderr
    assert "exiting with 5 broadcast(s) not published after 2 s (OUTBOX_EXIT_TIMEOUT)" in web.stderr
    assert "testapp.message pk=" in web.stderr
    assert elapsed < 15, f"the exit took {elapsed:.1f}s"
