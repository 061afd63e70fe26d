"""``turbo_async.refreshes`` against a real Redis server, and declarative refreshes
(``Meta.broadcasts_refreshes`` / ``refresh_parent``) run in this process.

The debounce's agreement is all in Redis: here one process plays every worker (the scheduled
task is recorded instead of queued, and :func:`refreshes.fire` is called as the task would);
tests/integration/test_refreshes.py runs it with two real worker processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

import turbo_async as turbo
from tests.services import RedisServer
from tests.testapp.models import Probe, ProbeRun
from tests.testapp.streams import ProbeStream
from turbo_async import conf, publish, refreshes, wiring
from turbo_async.changes import Change, bound_request_id
from turbo_async.testing import capture_broadcasts

GROUP = "turbo_async.test.refreshes"


@pytest.fixture
def debounced(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, float]]]:
    """Refreshes debounced through the real Redis as in a worker; scheduled tasks are recorded."""
    scheduled: list[tuple[str, str, float]] = []
    monkeypatch.setattr(refreshes, "debouncing", lambda group: True)
    # The stream's shard of the channel layer (the test process runs the in-memory layer).
    monkeypatch.setattr(refreshes, "layer_host", lambda group: {"address": redis_server.url})
    monkeypatch.setattr(refreshes, "schedule", lambda group, name, countdown: scheduled.append((group, name, countdown)))
    redis_server.client().delete(refreshes.key(GROUP))
    with override_settings(TURBO_ASYNC={"REFRESH_DEBOUNCE": 0.3, "REFRESH_MAX_WAIT": 1.0}):
        yield scheduled
    redis_server.client().delete(refreshes.key(GROUP))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    frames: list[tuple[str, str, str]] = []
    monkeypatch.setattr(refreshes.delivery, "send", lambda group, name, markup: frames.append((group, name, markup)))
    return frames


def test_a_burst_opens_one_window_and_the_last_request_id_wins(
    debounced: list[Any], sent: list[Any]
) -> None:
    for request_id in ("first", "", "second", "last"):
        refreshes.refresh(GROUP, "app:S", request_id)
    assert debounced == [(GROUP, "app:S", 0.3)]  # one delayed task for the whole burst
    assert sent == []
    assert refreshes.fire(GROUP, "app:S") is None  # not quiet yet: the task waits again
    assert len(debounced) == 2 and 0 < debounced[1][2] <= 0.3
    time.sleep(0.35)
    assert refreshes.fire(GROUP, "app:S") == "last"
    assert refreshes.fire(GROUP, "app:S") is None  # sent: the window is closed
    assert len(debounced) == 2
    refreshes.refresh(GROUP, "app:S", "")  # a new change opens a new window
    assert len(debounced) == 3


def test_continuous_refreshes_are_sent_after_the_max_wait(debounced: list[Any], sent: list[Any]) -> None:
    refreshes.refresh(GROUP, "app:S", "r0")
    started = time.monotonic()
    index = 0
    while time.monotonic() - started < 1.1:  # never quiet for 0.3 s, for longer than the max wait
        index += 1
        refreshes.refresh(GROUP, "app:S", f"r{index}")
        time.sleep(0.05)
    assert len(debounced) == 1
    assert refreshes.fire(GROUP, "app:S") == f"r{index}"


def test_without_debouncing_a_refresh_is_sent_now_with_its_request_id(sent: list[Any]) -> None:
    assert not refreshes.debouncing(GROUP)  # the test process: eager Celery, no task running
    refreshes.refresh(GROUP, "app:S", "abc")
    assert sent == [(GROUP, "app:S", '<turbo-stream action="refresh" request-id="abc"></turbo-stream>')]


@pytest.fixture
def in_a_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a worker: a task is running and Celery is not eager."""
    monkeypatch.setattr(refreshes, "get_current_task", lambda: object())
    app = conf.celery_app()
    app.conf.task_always_eager = False
    try:
        yield
    finally:
        app.conf.task_always_eager = True


def test_a_layer_that_is_not_channels_redis_means_no_debounce(
    in_a_task: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The test process runs Channels' in-memory layer: nothing to agree in."""
    monkeypatch.setattr(refreshes, "_warned", set())
    assert not refreshes.debouncing(GROUP)
    assert "refreshes are not debounced: the channel layer (InMemoryChannelLayer) is not channels_redis" in caplog.text


def test_a_layer_whose_internals_placement_cannot_read_sends_refreshes_at_once(
    in_a_task: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real pub/sub layer object without the constructor arguments placement reads (a newer
    channels_redis): no debounce window on a guessed Redis, one ERROR line saying why."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:7001/0"])
    del layer.__dict__["_kwargs"]
    monkeypatch.setattr(refreshes.delivery, "channel_layer", lambda: layer)
    monkeypatch.setattr(refreshes, "_warned", set())
    assert not refreshes.debouncing(GROUP)
    assert not refreshes.debouncing(GROUP)
    assert caplog.text.count("refreshes are not debounced (each is sent at once): RedisPubSubChannelLayer has no") == 1


@pytest.mark.parametrize("broker_url", ["redis://127.0.0.1:1/0", "amqp://guest@localhost//", "sentinel://127.0.0.1:1"])
def test_any_broker_debounces_in_the_layer_shard_of_the_stream(
    in_a_task: None, monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    """The window lives beside the stream's group, whatever carries the tasks (RabbitMQ with
    quorum queues included)."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0"])
    monkeypatch.setattr(refreshes.delivery, "channel_layer", lambda: layer)
    monkeypatch.setattr(conf.celery_app().conf, "broker_url", broker_url)
    assert refreshes.debouncing(GROUP)
    from turbo_async import placement

    assert refreshes.layer_host(GROUP) == placement.host_of(layer, GROUP)
    pool = refreshes._client(GROUP).connection_pool
    assert pool.connection_kwargs["port"] == int(placement.host_of(layer, GROUP)["address"].split(":")[2].split("/")[0])


def test_a_sentinel_layer_host_debounces_through_its_master(in_a_task: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from channels_redis.core import RedisChannelLayer
    from redis.sentinel import SentinelConnectionPool

    host = {"sentinels": [("127.0.0.1", 1), ("127.0.0.1", 2)], "master_name": "turbo"}
    monkeypatch.setattr(refreshes.delivery, "channel_layer", lambda: RedisChannelLayer(hosts=[host]))
    assert refreshes.debouncing(GROUP)
    pool = refreshes._client(GROUP).connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "turbo"


def test_max_wait_shorter_than_debounce_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"REFRESH_MAX_WAIT'\] \(0.1\) must not be shorter"):
        conf.load({"REFRESH_DEBOUNCE": 0.5, "REFRESH_MAX_WAIT": 0.1})


def test_the_delayed_task_is_published_with_the_commit_time_of_the_task_that_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lag metric of a debounced refresh starts at the commit that caused it (the header the
    running broadcast task was sent with), as a broadcast's does; queue, publish retries and
    Flower name are publish.schedule's (tests/test_publish.py)."""
    scheduled: list[tuple[Any, ...]] = []
    running = type("Task", (), {"request": {"turbo_async_committed": 1234.5}})()
    monkeypatch.setattr(refreshes, "get_current_task", lambda: running)
    monkeypatch.setattr(publish, "schedule", lambda *args: scheduled.append(args))
    refreshes.schedule(GROUP, "testapp:RoomStream", 0.3)
    assert scheduled == [
        (refreshes.REFRESH_TASK, [GROUP, "testapp:RoomStream"], "testapp.RoomStream.refresh.debounced", 0.3, 1234.5)
    ]
    monkeypatch.setattr(refreshes, "get_current_task", lambda: None)
    refreshes.schedule(GROUP, "testapp:RoomStream", 0.3)
    assert scheduled[-1][-1] is None  # outside a task: publish.schedule stamps now


# -- request ids on changes ------------------------------------------------------------------


def test_a_change_carries_the_request_id_to_the_task_and_the_last_one_wins() -> None:
    with bound_request_id("req-1"):
        first = Change("testapp.probe", 1, "save", True, request_id="req-1")
    assert first.to_payload()["request_id"] == "req-1"
    assert "request_id" not in Change("testapp.probe", 1, "save").to_payload()  # unchanged
    later = Change("testapp.probe", 1, "save", request_id="req-2")
    assert first.merge(later).request_id == "req-2"
    assert first.merge(Change("testapp.probe", 1, "save")).request_id == "req-1"
    assert first.merge(Change("testapp.probe", 1, "delete", snapshot={"id": 1})).request_id == "req-1"
    json.dumps(publish.message([(first, "default")]))  # all a broker carries


# -- declarative refreshes -------------------------------------------------------------------


@pytest.fixture
def run_stream() -> Iterator[type[turbo.ModelStream[Any]]]:
    """A stream of ProbeRun that declares refreshes and has no hook (defined here, so that the
    system checks do not see it as an unregistered module-level stream)."""

    class ProbeRunStream(turbo.ModelStream[ProbeRun]):
        class Meta:
            model = ProbeRun
            broadcasts_refreshes = True
            refresh_parent = "probe"

    wiring.register(ProbeRunStream)
    yield ProbeRunStream
    wiring.unregister(ProbeRunStream)


@pytest.mark.django_db(transaction=True)
def test_broadcasts_refreshes_refreshes_the_row_and_its_parent_on_save_and_delete(
    run_stream: type[turbo.ModelStream[Any]],
) -> None:
    with turbo.suppress():
        probe = Probe.objects.create(name="p")
    with capture_broadcasts() as recorder, bound_request_id("req-9"):
        run = ProbeRun.objects.create(probe=probe)
    refresh = '<turbo-stream action="refresh" request-id="req-9"></turbo-stream>'
    assert [(f.stream, f.group, f.markup) for f in recorder.frames] == [
        (run_stream.stream_name, run_stream.from_pk(run.pk).broadcastable_stream_name, refresh),
        (ProbeStream.stream_name, ProbeStream.from_pk(probe.pk).broadcastable_stream_name, refresh),
    ]
    run_pk = run.pk
    with capture_broadcasts() as recorder:
        run.delete()
    assert [(f.group, f.markup) for f in recorder.frames] == [
        (run_stream.from_pk(run_pk).broadcastable_stream_name, '<turbo-stream action="refresh"></turbo-stream>'),
        (ProbeStream.from_pk(probe.pk).broadcastable_stream_name, '<turbo-stream action="refresh"></turbo-stream>'),
    ]


def test_refresh_parent_must_name_a_foreign_key() -> None:
    with pytest.raises(ImproperlyConfigured, match="refresh_parent must name a ForeignKey or OneToOneField of ProbeRun, not 'nope'"):

        class BadStream(turbo.ModelStream[ProbeRun]):
            class Meta:
                model = ProbeRun
                refresh_parent = "nope"

    with pytest.raises(ImproperlyConfigured, match="broadcasts_refreshes must be True or False"):

        class OtherStream(turbo.ModelStream[ProbeRun]):
            class Meta:
                model = ProbeRun
                broadcasts_refreshes = "yes"


# -- {% turbo_refreshes_with %} ----------------------------------------------------------------


def test_turbo_refreshes_with_writes_the_meta_tags_and_refuses_other_values() -> None:
    def render(arguments: str) -> str:
        return Template("{% load turbo_streams %}{% turbo_refreshes_with " + arguments + " %}").render(Context())

    assert render("") == (
        '<meta name="turbo-refresh-method" content="replace"><meta name="turbo-refresh-scroll" content="reset">'
    )
    with pytest.raises(TemplateSyntaxError, match=r"method must be one of \('replace', 'morph'\), not '<script>'"):
        render('method="<script>"')
    with pytest.raises(TemplateSyntaxError, match="scroll must be one of"):
        render('scroll="top"')
