"""Components: rendered on the page, kept up to date by their stream, as in turbo-django."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.template import Context, Template

from tests.testapp.streams import NotificationComponent
from turbo_async.consumers import TurboStreamsConsumer
from turbo_async.testing import capture_broadcasts

PAGE = Template('{% load turbo_streams %}{% turbo_component "testapp:NotificationComponent" user %}')


def test_an_anonymous_visitors_user_component_renders() -> None:
    """turbo-django renders a UserBroadcastComponent for an anonymous visitor (its
    components_demo home page does); only the subscription is refused."""
    html = PAGE.render(Context({"user": AnonymousUser()}))
    assert 'id="testapp:NotificationComponent"' in html
    assert "signed-channel-name=" in html


@pytest.mark.django_db
async def test_the_anonymous_visitors_subscription_is_refused() -> None:
    signed = NotificationComponent(AnonymousUser()).signed_stream_name
    communicator = WebsocketCommunicator(TurboStreamsConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = AnonymousUser()
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data=json.dumps({"type": "subscribe", "signed_channel_name": signed}))
    reply = json.loads(await communicator.receive_from(timeout=2))
    await communicator.disconnect()
    assert reply == {
        "type": "error", "error": "permission denied", "signed_channel_name": signed,
        "stream": "testapp:NotificationComponent(null)",
    }


def test_rendering_an_anonymous_visitors_component_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"NotificationComponent.render\(\) needs a saved, logged-in user"):
        NotificationComponent(None).render(count=1)


@pytest.mark.django_db
def test_a_users_component_renders_to_that_user_only() -> None:
    user = User.objects.create_user("ada")
    with capture_broadcasts() as recorder:
        NotificationComponent(user).render(count=2)
    [frame] = recorder.frames
    assert frame.action == "update" and frame.target == "testapp:NotificationComponent"
    assert frame.group == NotificationComponent(user.pk).broadcastable_stream_name
