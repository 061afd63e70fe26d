"""Layer 0 (a leaf): the ``<turbo-stream>`` markup, byte for byte what turbo-django renders for
the same call.

turbo-django renders ``turbo/stream.html`` inside ``{% spaceless %}``: the frame is stripped and the
whitespace between tags (its own and the inner HTML's) is removed; the action and target are
escaped; the inner HTML is escaped unless it is safe (rendered templates are, plain ``text=``
strings are not). :func:`frame_markup` does the same without a template lookup per frame.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.template.loader import render_to_string
from django.utils.html import conditional_escape, escape, strip_spaces_between_tags
from django.utils.safestring import SafeString, mark_safe

APPEND = "append"
PREPEND = "prepend"
REPLACE = "replace"
UPDATE = "update"
REMOVE = "remove"
BEFORE = "before"
AFTER = "after"
REFRESH = "refresh"

ACTIONS = (APPEND, PREPEND, REPLACE, UPDATE, REMOVE, BEFORE, AFTER)
"""The actions that take a target, in turbo-django's order."""

CONTENT_TYPE = "text/vnd.turbo-stream.html"


def frame_markup(
    action: str, *, target: str | None = None, targets: str | None = None, html: Any = ""
) -> SafeString:
    """Render one ``<turbo-stream>`` element.

    >>> frame_markup("append", target="messages", html=mark_safe("<p>Hi</p>"))
    '<turbo-stream action="append" target="messages"><template><p>Hi</p></template></turbo-stream>'
    """
    if action == REFRESH:
        return mark_safe(f'<turbo-stream action="{REFRESH}"></turbo-stream>')
    if (target is None) == (targets is None):
        raise ValueError("Either selector or id can be used as a parameter.")
    attribute, value = ("target", target) if targets is None else ("targets", targets)
    inner = "" if action == REMOVE else conditional_escape(html)
    markup = (
        f'<turbo-stream action="{escape(action)}" {attribute}="{escape(value)}">\n'
        f"  <template>{inner}</template>\n</turbo-stream>"
    )
    return mark_safe(strip_spaces_between_tags(markup.strip()))


class TurboRender:
    """Inner HTML waiting for an action, as in turbo-django.

    >>> TurboRender.init_from_template("chat/message.html", {"message": m}).append(id="messages")
    >>> TurboRender(mark_safe("<b>Hi</b>")).update(selector=".greeting").response
    """

    def __init__(self, inner_html: str = "") -> None:
        self.inner_html = inner_html
        self._rendered_template: SafeString | None = None

    @classmethod
    def init_from_template(
        cls, template_name: str, context: dict[str, Any] | None = None, request: Any = None
    ) -> TurboRender:
        """Render ``template_name`` with ``context`` (as Django's ``render()`` does)."""
        return cls(render_to_string(template_name, context or {}, request))

    def append(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, APPEND)

    def prepend(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, PREPEND)

    def replace(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, REPLACE)

    def update(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, UPDATE)

    def remove(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, REMOVE)

    def before(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, BEFORE)

    def after(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, AFTER)

    def refresh(self) -> TurboRender:
        """A page refresh (Turbo 8): ``<turbo-stream action="refresh"></turbo-stream>``."""
        self._rendered_template = frame_markup(REFRESH)
        return self

    def _add_target(self, selector: str | None, id: str | None, action: str) -> TurboRender:
        if selector is None:
            self._rendered_template = frame_markup(action, target=id, html=self.inner_html)
        else:
            if id is not None:
                raise ValueError("Either selector or id can be used as a parameter.")
            self._rendered_template = frame_markup(action, targets=selector, html=self.inner_html)
        return self

    def render(self, selector_type: str, selector: str, action: str) -> TurboRender:
        """turbo-django's low-level form: ``selector_type`` is ``"css"`` or ``"id"``."""
        if selector_type == "css":
            return self._add_target(selector, None, action)
        return self._add_target(None, selector, action)

    @property
    def rendered_template(self) -> SafeString:
        if self._rendered_template is None:
            raise ValueError(
                "Template must be rendered with an template action (append, update, remove, etc...)"
            )
        return self._rendered_template

    @property
    def response(self) -> TurboResponse:
        return TurboResponse(self)

    def stream_to(self, stream_instance: Any) -> None:
        """Send this frame to the subscribers of ``stream_instance`` (turbo-django's spelling of
        ``stream_instance.stream(frame)``)."""
        stream_instance.stream(self.rendered_template)

    def __str__(self) -> str:
        return self.rendered_template


class TurboResponse(HttpResponse):
    """An HTTP response of ``text/vnd.turbo-stream.html`` made of rendered frames.

    >>> return TurboResponse(render_frame(request, "chat/message.html", ctx).append(id="messages"))
    """

    def __init__(self, *frames: TurboRender, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", CONTENT_TYPE)
        super().__init__(**kwargs)
        self.frames = list(frames)
        self.update_content()

    def add_frame(self, frame: TurboRender) -> None:
        self.frames.append(frame)
        self.update_content()

    def update_content(self) -> None:
        self.content = "".join(frame.rendered_template for frame in self.frames)


def render_frame(request: Any, template_name: str, context: dict[str, Any] | None = None) -> TurboRender:
    """A :class:`TurboRender` of a template, rendered with the request (as ``render()``).

    >>> render_frame(request, "chat/message.html", {"message": m}).replace(id=f"message-{m.pk}")
    """
    return TurboRender.init_from_template(template_name, context=context, request=request)


def render_frame_string(text: str) -> TurboRender:
    """A :class:`TurboRender` of a string (escaped unless marked safe, as in turbo-django)."""
    return TurboRender(text)


def remove_frame(selector: str | None = None, id: str | None = None) -> TurboRender:
    """A rendered ``remove`` frame: ``remove_frame(id="message-1").rendered_template``."""
    return TurboRender().remove(selector, id)
