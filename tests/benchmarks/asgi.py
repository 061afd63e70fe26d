"""The ASGI application of the latency benchmark's uvicorn processes, per ``BENCH_VARIANT``.

turbo_async: the integration tests' application (tests/asgi.py: OriginValidator, auth, the
library's consumer). turbo_django: turbo-django 0.4.4's own consumer on ``/ws/``, as its README
wires it (it checks no origin and answers a subscription with nothing).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.benchmarks.settings")

from django.conf import settings
from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

if settings.VARIANT == "turbo_django":
    from turbo.consumers import TurboStreamsConsumer

    application = ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": URLRouter([path("ws/", TurboStreamsConsumer.as_asgi())]),
        }
    )
else:
    from tests.asgi import application  # noqa: F401
