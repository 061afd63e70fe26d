"""Frames are byte for byte what turbo-django 0.4.4 renders for the same call.

turbo-django itself is installed in the test environment (package ``turbo``) and renders the
reference bytes through its own ``turbo/stream.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils.safestring import mark_safe

import turbo_async as turbo
from turbo_async.frames import frame_markup


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
