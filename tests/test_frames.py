"""Frames are byte for byte what turbo-django 0.4.4 renders for the same call.

turbo-django itself is installed in the test environment (package ``turbo``) and renders the
reference bytes through its own ``turbo/stream.html``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils.safestring import mark_safe

import turbo_async as turbo
from turbo_async.frames import action_markup, frame_markup


@pytest.fixture
def turbo_django() -> Any:
    import turbo as td  # turbo-django 0.4.4

    templates = Path(td.__file__).parent / "templates"
    with override_settings(
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [templates],
                "APP_DIRS": True,
            }
        ]
    ):
        yield td


INNER = [
    "Hi",
    mark_safe("<p>Hi</p>"),
    mark_safe('\n<div id="m-1">\n  <p class="x">Hi &amp; bye</p>\n</div>\n'),
    "<b>plain text is escaped</b>",
    "",
]


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("target", [{"id": "messages"}, {"selector": ".message > p"}])
def test_action_frames_match_turbo_django(
    turbo_django: Any, action: str, inner: str, target: dict[str, str]
) -> None:
    expected = getattr(turbo_django.TurboRender(inner), action)(**target).rendered_template
    assert getattr(turbo.TurboRender(inner), action)(**target).rendered_template == expected


@pytest.mark.parametrize("target", [{"id": "message-1"}, {"selector": "#x [data-a=\"b\"]"}])
def test_remove_frame_matches_turbo_django(turbo_django: Any, target: dict[str, str]) -> None:
    assert (
        turbo.remove_frame(**target).rendered_template
        == turbo_django.remove_frame(**target).rendered_template
    )


def test_append_frame_bytes() -> None:
    frame = turbo.TurboRender("Hi").append(id="messages").rendered_template
    assert frame == '<turbo-stream action="append" target="messages"><template>Hi</template></turbo-stream>'


def test_remove_renders_an_empty_template() -> None:
    assert turbo.remove_frame(id="m").rendered_template == (
        '<turbo-stream action="remove" target="m"><template></template></turbo-stream>'
    )


def test_selector_renders_targets() -> None:
    assert turbo.TurboRender("x").update(selector=".a").rendered_template == (
        '<turbo-stream action="update" targets=".a"><template>x</template></turbo-stream>'
    )


def test_refresh_frame() -> None:
    assert turbo.TurboRender().refresh().rendered_template == (
        '<turbo-stream action="refresh"></turbo-stream>'
    )
    assert frame_markup(turbo.REFRESH) == '<turbo-stream action="refresh"></turbo-stream>'


def test_target_is_escaped() -> None:
    assert 'target="a&quot;&gt;&lt;x"' in turbo.TurboRender("x").append(id='a"><x').rendered_template


def test_id_and_selector_together_are_refused() -> None:
    with pytest.raises(ValueError, match="Either selector or id can be used as a parameter."):
        turbo.TurboRender("x").append(selector=".a", id="a")


def test_neither_id_nor_selector_is_refused() -> None:
    with pytest.raises(ValueError, match="Either selector or id can be used as a parameter."):
        turbo.TurboRender("x").append()


def test_unrendered_frame_has_no_markup() -> None:
    with pytest.raises(ValueError, match="Template must be rendered"):
        _ = turbo.TurboRender("x").rendered_template


def test_render_frame_renders_a_template_with_the_request(rf: Any) -> None:
    request = rf.get("/")
    frame = turbo.render_frame(request, "testapp/tag.html", {"tag": {"slug": "a", "label": "A"}})
    assert frame.append(id="tags").rendered_template == (
        '<turbo-stream action="append" target="tags"><template><li id="tag-a">A</li></template></turbo-stream>'
    )


def test_turbo_response_concatenates_frames() -> None:
    response = turbo.TurboResponse(
        turbo.render_frame_string("a").append(id="x"), turbo.remove_frame(id="y")
    )
    assert response["Content-Type"] == "text/vnd.turbo-stream.html"
    assert response.content == (
        b'<turbo-stream action="append" target="x"><template>a</template></turbo-stream>'
        b'<turbo-stream action="remove" target="y"><template></template></turbo-stream>'
    )


def test_turbo_render_response_property() -> None:
    response = turbo.TurboRender("a").update(id="x").response
    assert response.content == b'<turbo-stream action="update" target="x"><template>a</template></turbo-stream>'


def test_exported_names() -> None:
    for name in (
        "Stream", "ModelStream", "TurboRender", "TurboResponse", "APPEND", "PREPEND", "REPLACE",
        "UPDATE", "REMOVE", "BEFORE", "AFTER", "REFRESH", "render_frame", "render_frame_string",
        "remove_frame", "BroadcastComponent", "UserBroadcastComponent",
    ):
        assert hasattr(turbo, name), name
    assert (turbo.APPEND, turbo.REMOVE, turbo.REFRESH) == ("append", "remove", "refresh")


# -- Turbo 8: morph, request ids, custom actions (issue 14) -----------------------------------


@pytest.mark.parametrize("action", ["replace", "update"])
def test_morph_adds_the_method_after_the_target(action: str) -> None:
    assert frame_markup(action, target="room-1", html=mark_safe("<li>1</li>"), method="morph") == (
        f'<turbo-stream action="{action}" target="room-1" method="morph"><template><li>1</li></template></turbo-stream>'
    )
    assert str(getattr(turbo.TurboRender(mark_safe("<b>x</b>")), action)(selector=".c", method="morph")) == (
        f'<turbo-stream action="{action}" targets=".c" method="morph"><template><b>x</b></template></turbo-stream>'
    )


@pytest.mark.parametrize("action", ["replace", "update"])
def test_without_method_replace_and_update_stay_turbo_djangos_bytes(turbo_django: Any, action: str) -> None:
    html = mark_safe("<p>Hi</p>")
    theirs = getattr(turbo_django.TurboRender(html), action)(id="m-1").rendered_template
    assert frame_markup(action, target="m-1", html=html) == theirs
    assert getattr(turbo.TurboRender(html), action)(id="m-1").rendered_template == theirs


def test_method_is_refused_when_unknown_or_on_another_action() -> None:
    with pytest.raises(ValueError, match=r"method='smooth' is not a Turbo Stream method; use method='morph'"):
        frame_markup("replace", target="x", method="smooth")
    with pytest.raises(ValueError, match="method='morph' applies to replace and update only, not to 'append'"):
        frame_markup("append", target="x", method="morph")


def test_refresh_carries_the_request_id_escaped() -> None:
    assert frame_markup("refresh") == '<turbo-stream action="refresh"></turbo-stream>'
    assert frame_markup("refresh", request_id="5f0c-1") == (
        '<turbo-stream action="refresh" request-id="5f0c-1"></turbo-stream>'
    )
    assert frame_markup("refresh", request_id='x" onload="alert(1)') == (
        '<turbo-stream action="refresh" request-id="x&quot; onload=&quot;alert(1)"></turbo-stream>'
    )
    assert str(turbo.TurboRender().refresh(request_id="r1")) == (
        '<turbo-stream action="refresh" request-id="r1"></turbo-stream>'
    )


def test_custom_action_with_target_and_attributes() -> None:
    assert action_markup(
        "notify", target="alerts", html=mark_safe("<p>Saved</p>"), attributes={"data-level": "info", "count": 3}
    ) == (
        '<turbo-stream action="notify" target="alerts" data-level="info" count="3">'
        "<template><p>Saved</p></template></turbo-stream>"
    )
    assert action_markup("log", targets=".panel") == (
        '<turbo-stream action="log" targets=".panel"><template></template></turbo-stream>'
    )
    assert action_markup("ping") == '<turbo-stream action="ping"><template></template></turbo-stream>'
    assert str(turbo.TurboRender("a < b").action("notify", id="alerts", attributes={"title": "t"})) == (
        '<turbo-stream action="notify" target="alerts" title="t"><template>a &lt; b</template></turbo-stream>'
    )


def test_custom_action_values_are_escaped() -> None:
    markup = action_markup(
        "notify", target='a" onclick="x', html="<script>alert(1)</script>",
        attributes={"data-message": '"><script>alert(1)</script>'},
    )
    assert markup == (
        '<turbo-stream action="notify" target="a&quot; onclick=&quot;x" '
        'data-message="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">'
        "<template>&lt;script&gt;alert(1)&lt;/script&gt;</template></turbo-stream>"
    )


@pytest.mark.parametrize(
    "name", ['notify" onclick="x', "no tify", "<script>", "", "1st", "x" * 65, "a/b", None]
)
def test_bad_action_names_are_refused_naming_them(name: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a valid Turbo Stream action name") as error:
        action_markup(name, target="x")
    assert repr(name) in str(error.value)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({'x" onclick="alert(1)': "v"}, "is not a valid attribute name"),
        ({"data level": "v"}, "'data level' is not a valid attribute name"),
        ({"a>b": "v"}, "'a>b' is not a valid attribute name"),
        ({"onclick": "alert(1)"}, "'onclick' looks like an event handler attribute"),
        ({"ONload": "alert(1)"}, "'ONload' looks like an event handler attribute"),
        ({"target": "y"}, "would repeat the frame's own 'target'"),
        ({"Action": "remove"}, "would repeat the frame's own 'action'"),
        ({"data-x": {"nested": 1}}, "The value of attribute 'data-x' must be a string or a number"),
        ({"data-x": True}, "The value of attribute 'data-x' must be a string or a number"),
    ],
)
def test_bad_attributes_are_refused_with_a_clear_error(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        action_markup("notify", target="x", attributes=attributes)


def test_custom_action_takes_target_or_targets_not_both() -> None:
    with pytest.raises(ValueError, match="Pass target= or targets=, not both."):
        action_markup("notify", target="x", targets=".x")
