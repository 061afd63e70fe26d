"""The ASGI application that integration tests serve with uvicorn."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

import turbo_async.routing  # noqa: E402
from turbo_async.security import OriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Browser tests load turbo's JS and the demo's CSS: Django serves static files (DEBUG off).
        # /metrics when TURBO_ASYNC["METRICS"] is on (tests/integration/test_metrics.py); else Django.
        "http": turbo_async.routing.with_metrics(ASGIStaticFilesHandler(django_asgi_app)),
        # As README's wiring: the page's own scheme, host and port, and CSRF_TRUSTED_ORIGINS.
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter(turbo_async.routing.websocket_urlpatterns))
        ),
    }
)
