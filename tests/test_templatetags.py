"""{% turbo_subscribe %}, {% turbo_component %} and turbo/head.html."""

from __future__ import annotations

import io
import re

import pytest
from django.core.handlers.asgi import ASGIRequest
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory, override_settings

from tests.testapp.factories import RoomFactory
from tests.testapp.models import Room
from tests.testapp.streams import RoomListStream
from turbo_async import names

pytestmark = pytest.mark.django_db


def render(source: str, **context: object) -> str:
    return Template("{% load turbo_streams %}" + source).render(Context(context))


def signed_names(html: str) -> list[str]:
    return re.findall(r'<turbo-channels-stream-source signed-channel-name="([^"]+)">', html)


def test_subscribe_to_a_model_instance() -> None:
    room = RoomFactory()
    (signed,) = signed_names(render("{% turbo_subscribe room %}", room=room))
    assert names.unsign(signed) == ("testapp:RoomStream", [room.pk], {})


def test_subscribe_by_name() -> None:
    (signed,) = signed_names(render("{% turbo_subscribe 'testapp:RoomListStream' %}"))
    assert names.unsign(signed) == ("testapp:RoomListStream", [], {})


def test_subscribe_to_a_stream_object_and_several_at_once() -> None:
    room = RoomFactory()
    html = render("{% turbo_subscribe room stream 'testapp:RoomListStream' %}", room=room, stream=RoomListStream())
    assert [names.unsign(s)[0] for s in signed_names(html)] == [
        "testapp:RoomStream", "testapp:RoomListStream", "testapp:RoomListStream",
    ]


def test_unknown_stream_name_is_a_template_error() -> None:
    with pytest.raises(TemplateSyntaxError, match="No stream is registered as 'testapp:Nope'"):
        render("{% turbo_subscribe 'testapp:Nope' %}")


def test_unsaved_instance_is_a_template_error() -> None:
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


def test_head_tells_the_client_a_wsgi_server_served_the_page(rf: RequestFactory) -> None:
    html = Template('{% include "turbo/head.html" %}').render(Context({"request": rf.get("/")}))
    assert 'data-ws-path="/ws/" data-served-by="wsgi"></script>' in html


def test_head_tells_the_client_an_asgi_server_served_the_page() -> None:
    request = ASGIRequest({"type": "http", "method": "GET", "path": "/", "headers": []}, io.BytesIO())
    html = Template('{% include "turbo/head.html" %}').render(Context({"request": request}))
    assert 'data-ws-path="/ws/" data-served-by="asgi"></script>' in html


def test_head_without_a_request_says_nothing_of_the_server() -> None:
    assert "data-served-by" not in Template('{% include "turbo/head.html" %}').render(Context())
