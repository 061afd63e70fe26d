"""Subscriptions against the real stack: uvicorn serving tests.asgi (AllowedHostsOriginValidator
around AuthMiddlewareStack), Redis as channel layer and broker, a real Celery worker, and a real
WebSocket client that carries a real Django session cookie."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import factory
import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.services import StreamClient, Uvicorn
from tests.testapp.streams import NotificationComponent, PrivateStream

pytestmark = pytest.mark.integration


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}")


def session_cookie(user: User) -> dict[str, str]:
    """A real session (in the database uvicorn reads), as the browser would send it."""
    client = Client()
    client.force_login(user)
    return {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}


@contextmanager
def socket(server: Uvicorn, user: User | None = None) -> Iterator[StreamClient]:
    client = StreamClient(server.ws_url, server.origin, session_cookie(user) if user else None)
    try:
        yield client
    finally:
        client.close()


def subscribe(client: StreamClient, signed_name: str) -> dict[str, Any]:
    client.subscribe(signed_name)
    return client.receive()


def broadcast_private(text: str) -> None:
    """A frame on PrivateStream, rendered and sent by the worker process after commit."""
    with transaction.atomic():
        PrivateStream().later.append(text=text, id="private")


@pytest.mark.database  # uvicorn reads the session and user rows this process committed
def test_a_staff_session_is_subscribed_and_receives_frames(live: Uvicorn) -> None:
    signed = PrivateStream().signed_stream_name
    with socket(live, UserFactory(is_staff=True)) as staff:
        assert subscribe(staff, signed) == {"type": "subscribed", "signed_channel_name": signed}
        broadcast_private("for staff")
        assert staff.receive_frames() == (
            '<turbo-stream action="append" target="private"><template>for staff</template></turbo-stream>'
        )


@pytest.mark.database  # uvicorn reads the session and user rows this process committed
def test_anonymous_and_unprivileged_sessions_are_refused_and_receive_nothing(live: Uvicorn) -> None:
    signed = PrivateStream().signed_stream_name
    with socket(live) as anonymous, socket(live, UserFactory()) as member, socket(
        live, UserFactory(is_staff=True)
    ) as staff:
        for refused in (anonymous, member):
            reply = subscribe(refused, signed)
            assert reply == {
                "type": "error", "error": "permission denied", "signed_channel_name": signed,
                "stream": "testapp:PrivateStream",
            }
        assert subscribe(staff, signed)["type"] == "subscribed"
        broadcast_private("secret")
        assert "secret" in staff.receive_frames()  # the frame went out; the others got none of it
        anonymous.assert_silent(0.5)
        member.assert_silent(0.5)


@pytest.mark.database  # uvicorn reads the session and user rows this process committed
def test_a_user_component_reaches_only_its_own_user(live: Uvicorn) -> None:
    alice, bob = UserFactory(), UserFactory()
    alices, bobs = NotificationComponent(alice).signed_stream_name, NotificationComponent(bob).signed_stream_name
    with socket(live, alice) as client:
        assert subscribe(client, bobs) == {
            "type": "error", "error": "permission denied", "signed_channel_name": bobs,
            "stream": f"testapp:NotificationComponent({bob.pk})",
        }
        assert subscribe(client, alices)["type"] == "subscribed"
        with transaction.atomic():
            NotificationComponent(bob).later.update("testapp/notification.html", {"count": 5}, id="n")
            NotificationComponent(alice).later.update("testapp/notification.html", {"count": 3}, id="n")
        assert client.receive_frames() == (
            '<turbo-stream action="update" target="n"><template><span class="count">3</span></template></turbo-stream>'
        )
        client.assert_silent(0.5)


def test_a_foreign_origin_is_rejected_at_the_handshake(web: Uvicorn) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(web.ws_url, origin="http://evil.example", open_timeout=10)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


def test_a_client_without_origin_is_rejected_at_the_handshake(web: Uvicorn) -> None:
    """AllowedHostsOriginValidator refuses a missing Origin header (browsers always send one)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(web.ws_url, open_timeout=10)
    assert refused.value.response.status_code == 403


def test_garbage_gets_error_frames_and_the_socket_keeps_working(live: Uvicorn) -> None:
    signed = PrivateStream().signed_stream_name
    with socket(live, UserFactory(is_staff=True)) as client:
        for garbage in ("not json", "[" * 5000, json.dumps({"type": 1}), json.dumps({"type": "subscribe"})):
            client.send_raw(garbage)
            assert client.receive()["type"] == "error"
        client.ws.send(b"\x00binary")
        assert client.receive()["error"] == "binary messages are not supported; send JSON text"
        client.send_raw(json.dumps({"type": "subscribe", "signed_channel_name": signed, "pad": "x" * 20000}))
        assert client.receive()["error"] == "message larger than 16384 bytes"
        assert subscribe(client, signed)["type"] == "subscribed"
        broadcast_private("still alive")
        assert "still alive" in client.receive_frames()
