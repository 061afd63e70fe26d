"""Layer 4 (an alias module): turbo-django's ``turbo.classes``, under our name: the stream
classes, ``TurboRender``, ``TurboResponse`` and the action and selector constants.

>>> from turbo_async.classes import ModelStream, Stream, TurboRender, APPEND
"""

from __future__ import annotations

from .frames import (
    AFTER,
    APPEND,
    BEFORE,
    PREPEND,
    REFRESH,
    REMOVE,
    REPLACE,
    UPDATE,
    TurboRender,
    TurboResponse,
)
from .streams import ModelStream, Stream

SELECTOR_CSS = "css"
SELECTOR_ID = "id"
SELECTOR_TYPES = (SELECTOR_ID, SELECTOR_CSS)
"""The ``selector_type`` values of :meth:`TurboRender.render`, as in turbo-django."""

__all__ = [
    "AFTER",
    "APPEND",
    "BEFORE",
    "PREPEND",
    "REFRESH",
    "REMOVE",
    "REPLACE",
    "SELECTOR_CSS",
    "SELECTOR_ID",
    "SELECTOR_TYPES",
    "UPDATE",
    "ModelStream",
    "Stream",
    "TurboRender",
    "TurboResponse",
]
