"""Layer 9: ``TurboRequestIdMiddleware``, Turbo 8's request ids on the request side.

Turbo sends ``X-Turbo-Request-Id`` with every fetch it makes and remembers the ids of its recent
requests; a ``<turbo-stream action="refresh" request-id="...">`` carrying one of them is ignored
by the page that made that request (it already shows the result). The middleware makes the header
the current request id (:func:`turbo_async.changes.bound_request_id`) for the whole request: every
change recorded meanwhile carries it to the worker, and the refresh it causes carries it back.

Add it to ``MIDDLEWARE`` (anywhere; it works for sync and async views)::

    MIDDLEWARE = [..., "turbo_async.middleware.TurboRequestIdMiddleware"]
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from .changes import bound_request_id

HEADER = "X-Turbo-Request-Id"
# Turbo sends a UUID; anything else that is short and plain is kept, the rest ignored (the id
# travels in every task of the request and is written into frames).
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def request_id(request: HttpRequest) -> str:
    """The request's valid ``X-Turbo-Request-Id``, or ``""``."""
    value = request.headers.get(HEADER, "")
    return value if _VALID.fullmatch(value) else ""


class TurboRequestIdMiddleware:
    """Bind Turbo's request id for the duration of each request (sync or async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        with bound_request_id(request_id(request)):
            response: HttpResponseBase = self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        with bound_request_id(request_id(request)):
            result: Awaitable[HttpResponseBase] = self.get_response(request)
            return await result
