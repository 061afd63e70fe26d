"""{% turbo_subscribe %}, {% turbo_component %} and turbo/head.html."""

from __future__ import annotations

import re

import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

from demo.chat.broadcasts import RoomListStream
from tests.factories import RoomFactory
from turbo_async import names

pytestmark = pytest.mark.django_db


def render(source: str, **context: object) -> str:
    return Template("{% load turbo_streams %}" + source).render(Context(context))


def signed_names(html: str) -> list[str]:
    return re.findall(r'<turbo-channels-stream-source signed-channel-name="([^"]+)">', html)


def test_subscribe_to_a_model_instance() -> None:
    room = RoomFactory()
    (signed,) = signed_names(render("{% turbo_subscribe room %}", room=room))
    assert names.unsign(signed) == ("chat:RoomStream", [room.pk], {})


def test_subscribe_by_name() -> None:
    (signed,) = signed_names(render("{% turbo_subscribe 'chat:RoomListStream' %}"))
    assert names.unsign(signed) == ("chat:RoomListStream", [], {})


def test_subscribe_to_a_stream_object_and_several_at_once() -> None:
    room = RoomFactory()
    html = render("{% turbo_subscribe room stream 'chat:RoomListStream' %}", room=room, stream=RoomListStream())
    assert [names.unsign(s)[0] for s in signed_names(html)] == [
        "chat:RoomStream", "chat:RoomListStream", "chat:RoomListStream",
    ]


def test_unknown_stream_name_is_a_template_error() -> None:
    with pytest.raises(TemplateSyntaxError, match="No stream is registered as 'chat:Nope'"):
        render("{% turbo_subscribe 'chat:Nope' %}")


def test_unsaved_instance_is_a_template_error() -> None:
    from demo.chat.models import Room

    with pytest.raises(TemplateSyntaxError, match="Cannot subscribe to an unsaved Room"):
        render("{% turbo_subscribe room %}", room=Room(name="x"))


def test_model_without_stream_is_a_template_error() -> None:
    from tests.testapp.models import Plain

    with pytest.raises(TemplateSyntaxError, match="Plain has no ModelStream"):
        render("{% turbo_subscribe plain %}", plain=Plain.objects.create(name="p"))


def test_head_loads_vendored_turbo_and_the_client() -> None:
    html = Template('{% include "turbo/head.html" %}').render(Context())
    assert '<script src="/static/turbo_async/js/turbo.es2017-umd.js" defer' in html
    assert 'src="/static/turbo_async/js/turbo-async.js" defer data-turbo-track="reload" data-ws-path="/ws/"' in html


@override_settings(TURBO_ASYNC={"WS_PATH": "/live/"})
def test_head_passes_the_websocket_path() -> None:
    assert 'data-ws-path="/live/"' in Template('{% include "turbo/head.html" %}').render(Context())
