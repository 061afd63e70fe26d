"""Layer 9: ``{% load turbo_streams %}``, ``{% turbo_subscribe %}``, ``{% turbo_component %}`` and
``{% turbo_refreshes_with %}``."""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer
from django import template
from django.db.models import Model
from django.template import TemplateSyntaxError
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import conf, history
from ..components import BaseComponent
from ..exceptions import UnknownStream
from ..registry import stream_registry
from ..streams import Stream

register = template.Library()

REFRESH_METHODS = ("replace", "morph")
REFRESH_SCROLLS = ("reset", "preserve")


def _stream(item: Any) -> Stream:
    if isinstance(item, Stream):
        return item
    if isinstance(item, Model):
        stream = getattr(item, "stream", None)
        if not isinstance(stream, Stream):
            raise TemplateSyntaxError(
                f"{type(item).__name__} has no ModelStream; define one in its app's streams.py."
            )
        if item.pk is None:
            raise TemplateSyntaxError(
                f"Cannot subscribe to an unsaved {type(item).__name__}: it has no primary key."
            )
        return stream
    if isinstance(item, str):
        try:
            return stream_registry.get_stream(item)()
        except UnknownStream as exc:
            raise TemplateSyntaxError(str(exc)) from None
    raise TemplateSyntaxError(
        f"turbo_subscribe takes streams, model instances or 'app:StreamName' strings, not {item!r}."
    )


def _source(stream: Stream) -> dict[str, Any]:
    """What one ``<turbo-channels-stream-source>`` carries: the signed name (turbo-django's
    attribute) and the stream's position now, so that the page's first subscription gets the
    frames sent between this render and that subscribe (the page shows the database as of now)."""
    layer = get_channel_layer()
    position = None if layer is None else history.at_render(layer, stream.broadcastable_stream_name)
    return {"stream": stream, "signed_name": stream.signed_stream_name, "position": position}


@register.inclusion_tag("turbo/turbo_stream_source.html")
def turbo_subscribe(*stream_items: Any) -> dict[str, Any]:
    """Subscribe the page: ``{% turbo_subscribe room %}``, ``{% turbo_subscribe 'chat:RoomListStream' %}``,
    or several at once: ``{% turbo_subscribe room request.user.notifications %}``.

    Put it above the content it keeps up to date: the position it embeds (``data-epoch``,
    ``data-offset``) is read when it renders, and the first subscribe replays what was sent
    after that."""
    streams = [_stream(item) for item in stream_items]
    return {"streams": streams, "sources": [_source(stream) for stream in streams]}


@register.inclusion_tag("turbo/components/broadcast_component.html", takes_context=True)
def turbo_component(context: template.Context, component: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Render a component and subscribe to it: ``{% turbo_component "app:AlertComponent" %}``."""
    if isinstance(component, str):
        try:
            component = stream_registry.get_stream(component)(*args, **kwargs)
        except UnknownStream as exc:
            raise TemplateSyntaxError(str(exc)) from None
    if not isinstance(component, BaseComponent):
        raise TemplateSyntaxError(f"turbo_component takes a component, not {component!r}.")
    flat: dict[str, Any] = dict(context.flatten())  # type: ignore[arg-type]  # keys are names
    return {"component": component, "initial_render": component.initial_render(flat)}


@register.simple_tag
def turbo_ws_path() -> str:
    """The WebSocket path the browser connects to (``TURBO_ASYNC["WS_PATH"]``)."""
    return conf.get().WS_PATH


@register.simple_tag(takes_context=True)
def turbo_served_by(context: template.Context) -> str:
    """``"wsgi"`` or ``"asgi"``: the kind of server that served the page's request (``""``
    without a request). turbo/head.html hands it to the browser client, which then explains a
    WebSocket handshake that a WSGI server (``runserver`` without daphne, gunicorn) cannot make."""
    request = context.get("request")
    if request is None:
        return ""
    return "wsgi" if "wsgi.version" in getattr(request, "META", {}) else "asgi"


@register.simple_tag
def turbo_refreshes_with(method: str = "replace", scroll: str = "reset") -> SafeString:
    """How the page refreshes (Turbo 8), in its ``<head>``:
    ``{% turbo_refreshes_with method="morph" scroll="preserve" %}`` writes
    ``<meta name="turbo-refresh-method" content="morph"><meta name="turbo-refresh-scroll"
    content="preserve">``. ``method`` is ``"replace"`` or ``"morph"``, ``scroll`` ``"reset"`` or
    ``"preserve"``."""
    if method not in REFRESH_METHODS:
        raise TemplateSyntaxError(
            f"turbo_refreshes_with: method must be one of {REFRESH_METHODS}, not {method!r}."
        )
    if scroll not in REFRESH_SCROLLS:
        raise TemplateSyntaxError(
            f"turbo_refreshes_with: scroll must be one of {REFRESH_SCROLLS}, not {scroll!r}."
        )
    return format_html(
        '<meta name="turbo-refresh-method" content="{}"><meta name="turbo-refresh-scroll" content="{}">',
        method, scroll,
    )
