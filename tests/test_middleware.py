"""``TurboRequestIdMiddleware``: Turbo's ``X-Turbo-Request-Id`` becomes the current request id
for the request (sync and async), so that the changes recorded meanwhile carry it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from tests.testapp.models import Probe
from turbo_async import pending
from turbo_async.changes import Change, current_request_id
from turbo_async.middleware import TurboRequestIdMiddleware


def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(current_request_id())


@pytest.mark.parametrize(
    ("header", "seen"),
    [
        ("8c5c3a0e-4f1e-4b8a-9f55-0c1d2e3f4a5b", "8c5c3a0e-4f1e-4b8a-9f55-0c1d2e3f4a5b"),
        (None, ""),
        ('x" onload="alert(1)', ""),  # not an id Turbo sends: ignored, never written into a frame
        ("x" * 65, ""),
    ],
)
def test_the_header_is_the_request_id_during_the_request(header: str | None, seen: str) -> None:
    headers = {} if header is None else {"HTTP_X_TURBO_REQUEST_ID": header}
    response = TurboRequestIdMiddleware(echo)(RequestFactory().post("/", **headers))
    assert response.content.decode() == seen
    assert current_request_id() == ""  # and no longer after it


def test_async_views_see_it_too() -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_request_id())

    middleware = TurboRequestIdMiddleware(view)
    assert asyncio.iscoroutinefunction(middleware)
    request = RequestFactory().get("/", HTTP_X_TURBO_REQUEST_ID="abc-1")
    response = asyncio.run(middleware(request))
    assert response.content == b"abc-1"


@pytest.mark.django_db
def test_changes_recorded_during_the_request_carry_it(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[Any] = []
    monkeypatch.setattr(pending, "record", lambda alias, item: recorded.append(item))

    def view(request: HttpRequest) -> HttpResponse:
        probe = Probe.objects.create(name="p")
        probe.name = "q"
        probe.save()
        return HttpResponse()

    TurboRequestIdMiddleware(view)(RequestFactory().post("/", HTTP_X_TURBO_REQUEST_ID="req-42"))
    assert [(type(item), item.event, item.request_id) for item in recorded] == [
        (Change, "save", "req-42"),
        (Change, "save", "req-42"),
    ]
