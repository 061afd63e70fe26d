"""``{% turbo_subscribe %}`` embeds the stream's position at render (``data-epoch``,
``data-offset``), read from a real Redis through both channels_redis layers; without history,
Redis or a Redis layer it renders turbo-django's element unchanged and never fails the page."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.template import Context, Template

from tests.services import RedisServer, free_port
from tests.testapp.factories import RoomFactory
from turbo_async import history, names

pytestmark = [pytest.mark.django_db, pytest.mark.integration]

LAYERS = ("channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer")
ELEMENT = re.compile(
    r'<turbo-channels-stream-source signed-channel-name="([^"]+)"'
    r'(?: data-epoch="([0-9a-f]+)" data-offset="(\d+)")?></turbo-channels-stream-source>'
)


def render(source: str, **context: object) -> str:
    return Template("{% load turbo_streams %}" + source).render(Context(context))


def elements(html: str) -> list[tuple[str, str, str]]:
    found = ELEMENT.findall(html)
    assert found, html
    return found


def layer_settings(backend: str, url: str) -> dict[str, Any]:
    return {"default": {"BACKEND": backend, "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}]}}}


@pytest.fixture(autouse=True)
def fresh_render_state() -> Iterator[None]:
    """Each test starts with Redis considered up (a failed read makes renders skip it a while)."""
    history._render_down_until = 0.0
    history._render_warned = False
    history._internals_warned = False
    yield
    history._render_down_until = 0.0
    history._render_warned = False
    history._internals_warned = False


@pytest.fixture(params=LAYERS, ids=["core", "pubsub"])
def redis_layer(request: pytest.FixtureRequest, redis_server: RedisServer, settings: Any) -> RedisServer:
    settings.CHANNEL_LAYERS = layer_settings(request.param, redis_server.url)
    # Primary keys come back between tests (rolled-back transactions): so would their positions.
    client = redis_server.client()
    for key in client.scan_iter("turbo_async:*"):
        client.delete(key)
    return redis_server


def append(url: str, group: str, data: str) -> history.Position:
    """What a worker does for one publication: numbered and kept in the history."""
    from channels_redis.core import RedisChannelLayer

    async def go() -> history.Position:
        layer = RedisChannelLayer(hosts=[{"address": url, "socket_timeout": None}])
        try:
            return await history.append(layer, group, data)
        finally:
            await layer.close_pools()

    return asyncio.run(go())


def test_a_stream_without_batches_is_rendered_at_offset_zero_of_a_new_epoch(redis_layer: RedisServer) -> None:
    room = RoomFactory()
    ((signed, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
    assert names.unsign(signed) == ("testapp:RoomStream", [room.pk], {})
    assert offset == "0" and len(epoch) == 16
    # The worker's first batch continues that epoch: the page's subscribe asks for offset 1.
    assert append(redis_layer.url, room.stream.broadcastable_stream_name, "<f/>") == history.Position(epoch, 1)


def test_the_position_is_the_streams_last_offset(redis_layer: RedisServer) -> None:
    room = RoomFactory()
    group = room.stream.broadcastable_stream_name
    for n in range(3):
        last = append(redis_layer.url, group, f"<f{n}/>")
    ((_, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
    assert (epoch, int(offset)) == (last.epoch, 3)


def test_rendering_twice_keeps_the_epoch(redis_layer: RedisServer) -> None:
    room = RoomFactory()
    first = elements(render("{% turbo_subscribe room %}", room=room))
    second = elements(render("{% turbo_subscribe room %}", room=room))
    assert first[0][1:] == second[0][1:]


def test_each_stream_of_a_tag_gets_its_own_position(redis_layer: RedisServer) -> None:
    room = RoomFactory()
    append(redis_layer.url, room.stream.broadcastable_stream_name, "<f/>")
    html = render("{% turbo_subscribe room 'testapp:RoomListStream' %}", room=room)
    (room_element, list_element) = elements(html)
    assert room_element[2] == "1"
    assert list_element[1] and list_element[1] != room_element[1]


def test_a_component_carries_the_position_too(redis_layer: RedisServer) -> None:
    from django.contrib.auth.models import User

    user = User.objects.create_user("reader")
    html = render('{% turbo_component "testapp:NotificationComponent" user %}', user=user)
    ((_, epoch, offset),) = elements(html)
    assert epoch and offset == "0"


def test_the_in_memory_layer_renders_turbo_djangos_element() -> None:
    room = RoomFactory()
    html = render("{% turbo_subscribe room %}", room=room)
    assert re.search(r'<turbo-channels-stream-source signed-channel-name="[^"]+"></turbo-channels-stream-source>', html)
    assert "data-epoch" not in html and "data-offset" not in html


@pytest.mark.parametrize("turbo_async", [{"HISTORY_SIZE": 0}, {"OFFSETS": False}], ids=["no-history", "no-offsets"])
def test_without_history_no_position_is_rendered(
    redis_layer: RedisServer, settings: Any, turbo_async: dict[str, Any]
) -> None:
    settings.TURBO_ASYNC = turbo_async
    room = RoomFactory()
    ((_, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
    assert (epoch, offset) == ("", "")
    assert not redis_layer.client().exists(history.position_key(room.stream.broadcastable_stream_name))


@pytest.mark.parametrize("backend", LAYERS, ids=["core", "pubsub"])
def test_an_unreachable_redis_renders_without_a_position_and_warns_once(
    settings: Any, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CHANNEL_LAYERS = layer_settings(backend, f"redis://127.0.0.1:{free_port()}/0")
    room = RoomFactory()
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        for _ in range(2):
            history._render_down_until = 0.0  # try Redis each time: the second failure is the same outage
            ((_, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
            assert (epoch, offset) == ("", "")
    records = [r for r in caplog.records if "without its stream position" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG]
    assert room.stream.broadcastable_stream_name in records[0].getMessage()


def test_after_a_failure_renders_skip_redis_for_a_while(settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings.CHANNEL_LAYERS = layer_settings(LAYERS[0], f"redis://127.0.0.1:{free_port()}/0")
    room = RoomFactory()
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        for _ in range(3):
            render("{% turbo_subscribe room %}", room=room)
    assert len([r for r in caplog.records if "without its stream position" in r.getMessage()]) == 1


# The channels_redis internals a render reads to find a stream's Redis: the pub/sub layer's
# constructor arguments, the core layer's host list. Each is removed from a real layer object.
MISSING_INTERNALS = [(LAYERS[1], "_kwargs"), (LAYERS[1], "_args"), (LAYERS[0], "hosts")]


@pytest.mark.parametrize(("backend", "attribute"), MISSING_INTERNALS, ids=["pubsub-_kwargs", "pubsub-_args", "core-hosts"])
def test_a_layer_missing_an_internal_renders_without_a_position_and_logs_an_error_once(
    redis_server: RedisServer, backend: str, attribute: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A channels_redis release that drops an attribute turbo_async reads must not fail
    ``{% turbo_subscribe %}``: the page renders turbo-django's element, and the logs say why."""
    from django.utils.module_loading import import_string

    from turbo_async.templatetags import turbo_streams

    layer = import_string(backend)(hosts=[{"address": redis_server.url, "socket_timeout": None}])
    delattr(layer, attribute)
    monkeypatch.setattr(turbo_streams, "get_channel_layer", lambda: layer)
    room = RoomFactory()
    group = room.stream.broadcastable_stream_name
    redis_server.client().delete(history.position_key(group))
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        for _ in range(2):
            ((signed, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
            assert signed and (epoch, offset) == ("", "")
    records = [r for r in caplog.records if "could not find which Redis" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]
    assert type(layer).__name__ in records[0].getMessage()
    assert not redis_server.client().exists(history.position_key(group))


def test_a_pubsub_layer_missing_its_arguments_sends_frames_without_offsets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker and socket side of the same change: offsets off for that layer, with an ERROR."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
    assert history.enabled(layer) is True
    del layer._kwargs
    with caplog.at_level(logging.DEBUG, logger="turbo_async"):
        assert history.enabled(layer) is False
    [record] = [r for r in caplog.records if "could not find which Redis" in r.getMessage()]
    assert record.levelno == logging.ERROR and "frames go out without stream positions" in record.getMessage()


def test_a_frozen_redis_costs_one_render_at_most_the_render_timeout_then_renders_skip_it(
    settings: Any, tmp_path: Any
) -> None:
    """docs/client.rst: a Redis that accepts connections but never answers (SIGSTOP) holds a render
    for ``RENDER_TIMEOUT`` (0.5 s), then renders skip Redis for ``RENDER_RETRY_AFTER`` (5 s).
    Asserted with slack for a loaded machine: the first render within 5 s, the next ones within 0.5 s."""
    import signal
    import time

    server = RedisServer(free_port(), tmp_path / "frozen")
    server.start()
    settings.CHANNEL_LAYERS = layer_settings(LAYERS[1], server.url)
    room = RoomFactory()
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            ((_, epoch, offset),) = elements(render("{% turbo_subscribe room %}", room=room))
            timings.append(time.monotonic() - started)
            assert (epoch, offset) == ("", "")
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
    print(f"\nfrozen Redis: renders took {', '.join(f'{t:.2f}' for t in timings)} s")
    assert (history.RENDER_TIMEOUT, history.RENDER_RETRY_AFTER) == (0.5, 5.0)
    assert timings[0] < 5 and max(timings[1:]) < 0.5, timings
