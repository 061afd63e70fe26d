"""Layer 0 (a leaf): the ``<turbo-stream>`` markup, byte for byte what turbo-django renders for
the same call.

turbo-django renders ``turbo/stream.html`` inside ``{% spaceless %}``: the frame is stripped and the
whitespace between tags (its own and the inner HTML's) is removed; the action and target are
escaped; the inner HTML is escaped unless it is safe (rendered templates are, plain ``text=``
strings are not). :func:`frame_markup` does the same without a template lookup per frame.

Beyond turbo-django (Turbo 8, as turbo-rails 2 writes them): ``method="morph"`` on ``replace`` and
``update``, ``request-id`` on ``refresh``, and custom actions with attributes
(:func:`action_markup`). Their names are validated and every value is escaped; a frame that uses
none of them is byte for byte turbo-django's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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

MORPH = "morph"
METHODS = (MORPH,)
"""The values of ``method=`` (Turbo 8 morphs the target's children instead of replacing them)."""
MORPHABLE = (REPLACE, UPDATE)

# A custom action is looked up as ``Turbo.StreamActions[name]``: a plain identifier-like name.
_ACTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# Plain HTML attribute names only: no spaces, quotes, "=", ">" or "/" can reach the markup.
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
RESERVED_ATTRIBUTES = frozenset({"action", "target", "targets"})
"""Attributes an action's own arguments write; ``attributes=`` may not set them again."""


def validate_action_name(name: Any) -> str:
    """``name`` if it can be a custom action's name, else a ValueError naming it."""
    if not isinstance(name, str) or not _ACTION_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid Turbo Stream action name: use a letter followed by up to 63 "
            "letters, digits, '_' or '-' (the name of a Turbo.StreamActions function)."
        )
    return name


def validate_attributes(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``attributes=`` of an action as ``{name: text}``; refuses names that are not plain
    attribute names, event handlers (``on...``) and the reserved ``action``/``target(s)``."""
    checked: dict[str, str] = {}
    for name, value in (attributes or {}).items():
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a valid attribute name for a <turbo-stream>: use a letter followed "
                "by letters, digits, '_', '.', ':' or '-'."
            )
        lowered = name.lower()
        if lowered in RESERVED_ATTRIBUTES:
            raise ValueError(
                f"attributes={{{name!r}: ...}} would repeat the frame's own {lowered!r}: pass it as "
                "the action's argument instead."
            )
        if lowered.startswith("on"):
            raise ValueError(
                f"{name!r} looks like an event handler attribute; a <turbo-stream> takes none."
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(
                f"The value of attribute {name!r} must be a string or a number, not {value!r}."
            )
        checked[name] = str(value)
    return checked


def validate_method(action: str, method: str | None) -> None:
    """Refuse a ``method=`` other than ``"morph"``, or on an action other than replace/update."""
    if method is None:
        return
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a Turbo Stream method; use method={MORPH!r}.")
    if action not in MORPHABLE:
        raise ValueError(f"method={method!r} applies to replace and update only, not to {action!r}.")


def _attributes_markup(attributes: Mapping[str, str]) -> str:
    return "".join(f' {name}="{escape(value)}"' for name, value in attributes.items())


def frame_markup(
    action: str,
    *,
    target: str | None = None,
    targets: str | None = None,
    html: Any = "",
    method: str | None = None,
    request_id: str | None = None,
) -> SafeString:
    """Render one ``<turbo-stream>`` element.

    >>> frame_markup("append", target="messages", html=mark_safe("<p>Hi</p>"))
    '<turbo-stream action="append" target="messages"><template><p>Hi</p></template></turbo-stream>'
    >>> frame_markup("replace", target="room-1", html=mark_safe("<li>…</li>"), method="morph")
    '<turbo-stream action="replace" target="room-1" method="morph"><template><li>…</li></template></turbo-stream>'
    >>> frame_markup("refresh", request_id="4f1c")
    '<turbo-stream action="refresh" request-id="4f1c"></turbo-stream>'
    """
    if action == REFRESH:
        extra = f' request-id="{escape(request_id)}"' if request_id else ""
        return mark_safe(f'<turbo-stream action="{REFRESH}"{extra}></turbo-stream>')
    if (target is None) == (targets is None):
        raise ValueError("Either selector or id can be used as a parameter.")
    validate_method(action, method)
    attribute, value = ("target", target) if targets is None else ("targets", targets)
    extra = f' method="{method}"' if method else ""
    inner = "" if action == REMOVE else conditional_escape(html)
    markup = (
        f'<turbo-stream action="{escape(action)}" {attribute}="{escape(value)}"{extra}>\n'
        f"  <template>{inner}</template>\n</turbo-stream>"
    )
    return mark_safe(strip_spaces_between_tags(markup.strip()))


def action_markup(
    name: str,
    *,
    target: str | None = None,
    targets: str | None = None,
    html: Any = "",
    attributes: Mapping[str, Any] | None = None,
) -> SafeString:
    """Render a custom action (``Turbo.StreamActions[name]`` on the page), as turbo-rails'
    ``turbo_stream_action_tag``: the target is optional, the attributes follow it, escaped.

    >>> action_markup("notify", target="alerts", html="Saved", attributes={"data-level": "info"})
    '<turbo-stream action="notify" target="alerts" data-level="info"><template>Saved</template></turbo-stream>'
    """
    validate_action_name(name)
    if target is not None and targets is not None:
        raise ValueError("Pass target= or targets=, not both.")
    targeting = ""
    if target is not None:
        targeting = f' target="{escape(target)}"'
    elif targets is not None:
        targeting = f' targets="{escape(targets)}"'
    extra = _attributes_markup(validate_attributes(attributes))
    markup = (
        f'<turbo-stream action="{name}"{targeting}{extra}>\n'
        f"  <template>{conditional_escape(html)}</template>\n</turbo-stream>"
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

    def replace(
        self, selector: str | None = None, id: str | None = None, method: str | None = None
    ) -> TurboRender:
        """Replace the target; ``method="morph"`` morphs it instead (Turbo 8)."""
        return self._add_target(selector, id, REPLACE, method)

    def update(
        self, selector: str | None = None, id: str | None = None, method: str | None = None
    ) -> TurboRender:
        """Update the target's content; ``method="morph"`` morphs it instead (Turbo 8)."""
        return self._add_target(selector, id, UPDATE, method)

    def remove(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, REMOVE)

    def before(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, BEFORE)

    def after(self, selector: str | None = None, id: str | None = None) -> TurboRender:
        return self._add_target(selector, id, AFTER)

    def refresh(self, request_id: str | None = None) -> TurboRender:
        """A page refresh (Turbo 8): ``<turbo-stream action="refresh"></turbo-stream>``; the page
        whose request had ``request_id`` ignores it."""
        self._rendered_template = frame_markup(REFRESH, request_id=request_id)
        return self

    def action(
        self,
        name: str,
        selector: str | None = None,
        id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> TurboRender:
        """A custom action: ``TurboRender(text).action("notify", id="alerts", attributes={...})``."""
        self._rendered_template = action_markup(
            name, target=id, targets=selector, html=self.inner_html, attributes=attributes
        )
        return self

    def _add_target(
        self, selector: str | None, id: str | None, action: str, method: str | None = None
    ) -> TurboRender:
        if selector is None:
            self._rendered_template = frame_markup(action, target=id, html=self.inner_html, method=method)
        else:
            if id is not None:
                raise ValueError("Either selector or id can be used as a parameter.")
            self._rendered_template = frame_markup(
                action, targets=selector, html=self.inner_html, method=method
            )
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
