"""The three samples' URL configurations, each under its own prefix."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("chat/", include("chat.urls")),
    path("reminders/", include("reminders.urls")),
    path("components/", include("app.urls")),
]
