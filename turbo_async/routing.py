"""Layer 9: the WebSocket routes, include them in your ASGI application.

>>> from channels.auth import AuthMiddlewareStack
>>> from channels.routing import ProtocolTypeRouter, URLRouter
>>> from channels.security.websocket import AllowedHostsOriginValidator
>>> application = ProtocolTypeRouter({
...     "http": get_asgi_application(),
...     "websocket": AllowedHostsOriginValidator(
...         AuthMiddlewareStack(URLRouter(turbo_async.routing.websocket_urlpatterns))
...     ),
... })

With ``TURBO_ASYNC["METRICS"]`` on, wrap the HTTP application to serve the metrics on
``METRICS_PATH`` (``/metrics``); while metrics are off it passes everything through:

>>> "http": turbo_async.routing.with_metrics(get_asgi_application()),
"""

from __future__ import annotations

from django.urls import path

from . import conf
from .consumers import TurboStreamsConsumer
from .metrics import asgi as with_metrics

__all__ = ["websocket_urlpatterns", "with_metrics"]

websocket_urlpatterns = [
    # "ws/" by default; TURBO_ASYNC["WS_PATH"] moves it (and the browser follows).
    # Channels' URLRouter takes Django's path() with an ASGI app, which django-stubs types as a view.
    path(conf.get().WS_PATH.lstrip("/"), TurboStreamsConsumer.as_asgi()),  # type: ignore[arg-type]
]
