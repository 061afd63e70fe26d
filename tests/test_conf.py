"""TURBO_ASYNC settings: defaults, validation, errors that say what to do."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from turbo_async import conf


def test_defaults() -> None:
    settings = conf.load(None)
    assert settings.QUEUE is None
    assert settings.ON_PUBLISH_ERROR == "log"
    assert settings.WS_PATH == "/ws/"


def test_unknown_key_names_the_valid_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"Unknown TURBO_ASYNC key\(s\): 'QUEU'. Valid keys are: .*QUEUE"):
        conf.load({"QUEU": "x"})


def test_wrong_type_is_explained() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"TURBO_ASYNC\['MAX_SUBSCRIPTIONS'\] must be int, not '10'."):
        conf.load({"MAX_SUBSCRIPTIONS": "10"})


def test_bad_policy_lists_the_choices() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"must be one of \('log', 'inline'\), not 'retry'"):
        conf.load({"ON_PUBLISH_ERROR": "retry"})


def test_ws_path_needs_slashes() -> None:
    with pytest.raises(ImproperlyConfigured, match="must start and end with '/'"):
        conf.load({"WS_PATH": "ws"})


def test_not_a_dict() -> None:
    with pytest.raises(ImproperlyConfigured, match="TURBO_ASYNC must be a dict, not list."):
        conf.load([])


def test_settings_are_reread_when_changed() -> None:
    assert conf.get().QUEUE is None
    with override_settings(TURBO_ASYNC={"QUEUE": "broadcasts"}):
        assert conf.get().QUEUE == "broadcasts"
    assert conf.get().QUEUE is None


def test_flags_must_be_booleans() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"TURBO_ASYNC\['PUBLISH_IN_BACKGROUND'\] must be True or False, not 'yes'."):
        conf.load({"PUBLISH_IN_BACKGROUND": "yes"})


@pytest.mark.parametrize("name", ["OUTBOX_MAX_SIZE", "BATCH_MAX_SIZE", "MESSAGE_BURST", "LAYER_CONCURRENCY"])
def test_counts_that_must_be_at_least_one(name: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=rf"TURBO_ASYNC\['{name}'\] must be at least 1, not 0\."):
        conf.load({name: 0})


def test_batch_linger_is_a_few_milliseconds_at_most_a_second() -> None:
    assert conf.load({"BATCH_LINGER": 0}).BATCH_LINGER == 0
    with pytest.raises(ImproperlyConfigured, match=r"TURBO_ASYNC\['BATCH_LINGER'\] is in seconds and must be at most 1, not 2 "):
        conf.load({"BATCH_LINGER": 2})


def test_an_unknown_outbox_kind_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"TURBO_ASYNC\['OUTBOX'\] must be one of \('memory', 'database'\), not 'disk'\."):
        conf.load({"OUTBOX": "disk"})
