"""turbo_async: Hotwire Turbo Streams for Django, rendered by Celery workers after commit.

``import turbo_async as turbo`` keeps a turbo-django ``streams.py`` unchanged.

Layer 11: the public names, re-exported from the modules that define them; no module of the
package imports this one.
"""

from __future__ import annotations

from .components import BroadcastComponent, UserBroadcastComponent
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
    remove_frame,
    render_frame,
    render_frame_string,
)
from .pending import suppress
from .registry import stream_registry
from .streams import ModelStream, Stream
from .wiring import register

__version__ = "0.1.0"

__all__ = [
    "AFTER",
    "APPEND",
    "BEFORE",
    "PREPEND",
    "REFRESH",
    "REMOVE",
    "REPLACE",
    "UPDATE",
    "BroadcastComponent",
    "ModelStream",
    "Stream",
    "TurboRender",
    "TurboResponse",
    "UserBroadcastComponent",
    "register",
    "remove_frame",
    "render_frame",
    "render_frame_string",
    "stream_registry",
    "suppress",
]
