"""Layer 4 (an alias module): turbo-django's ``turbo.shortcuts``, under our name:
``render_frame``, ``render_frame_string`` and ``remove_frame`` (defined in :mod:`turbo_async.frames`).

>>> from turbo_async.shortcuts import render_frame, remove_frame
"""

from __future__ import annotations

from .frames import remove_frame, render_frame, render_frame_string

__all__ = ["remove_frame", "render_frame", "render_frame_string"]
