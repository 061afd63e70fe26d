from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import include, path
from django.views.generic import TemplateView


def client_page(mode: str) -> Callable[..., Any]:
    """A page of the browser client's tests (tests/e2e/test_client.py): with turbo/head.html
    ("head"), without it ("no-head"), or loading turbo-async.js without Turbo ("no-turbo")."""
    return TemplateView.as_view(template_name="testapp/client.html", extra_context={"mode": mode})


urlpatterns = [
    path("", include("demo.chat.urls")),
    path("client/", client_page("head")),
    path("client/no-head/", client_page("no-head")),
    path("client/no-turbo/", client_page("no-turbo")),
]
