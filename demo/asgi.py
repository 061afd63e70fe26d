from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

import turbo_async.routing  # noqa: E402
from turbo_async.security import OriginValidator  # noqa: E402

# uvicorn serves no static files: Django does, in DEBUG or with DJANGO_SERVE_STATIC=1 (compose).
http_app = django_asgi_app
if settings.DEBUG or os.environ.get("DJANGO_SERVE_STATIC") == "1":
    http_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        # /metrics when TURBO_ASYNC["METRICS"] is on (DEMO_METRICS, docs/monitoring.rst).
        "http": turbo_async.routing.with_metrics(http_app),
        # Only the page's own scheme, host and port (and CSRF_TRUSTED_ORIGINS) may open a socket.
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter(turbo_async.routing.websocket_urlpatterns))
        ),
    }
)
