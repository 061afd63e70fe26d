"""``turbo_async.names``: the signed name a page subscribes with and the group a worker sends to."""

from __future__ import annotations

import datetime

import pytest
from django.core import signing
from django.test import override_settings

from turbo_async import conf, names
from turbo_async.exceptions import InvalidSubscription


def test_a_signed_name_unsigns_to_its_identity() -> None:
    signed = names.sign("testapp:RoomStream", [5], {"lang": "fr"})
    assert names.unsign(signed) == ("testapp:RoomStream", [5], {"lang": "fr"})


def test_the_identity_is_normalised_as_the_browser_sends_it_back() -> None:
    assert names.identity("testapp:S", (1, datetime.date(2026, 11, 27)), {"k": (2,)}) == (  # type: ignore[arg-type]
        "testapp:S", [1, "2026-11-27"], {"k": [2]},
    )


def test_a_tampered_signed_name_is_refused() -> None:
    signed = names.sign("testapp:RoomStream", [5], {})
    tampered = signed[:-1] + ("A" if signed[-1] != "A" else "B")
    with pytest.raises(InvalidSubscription, match="^bad signature$"):
        names.unsign(tampered)


def test_a_name_signed_with_another_salt_is_refused() -> None:
    signed = names.sign("testapp:RoomStream", [5], {})
    with override_settings(TURBO_ASYNC={"SIGNING_SALT": "another.salt"}), pytest.raises(
        InvalidSubscription, match="^bad signature$"
    ):
        names.unsign(signed)


@pytest.mark.parametrize("value", ["", None, 5])
def test_an_empty_or_non_string_name_is_refused(value: object) -> None:
    with pytest.raises(InvalidSubscription, match="^signed_channel_name must be a non-empty string$"):
        names.unsign(value)  # type: ignore[arg-type]


def test_a_validly_signed_payload_of_another_shape_is_refused() -> None:
    signed = signing.dumps({"stream": "testapp:RoomStream"}, salt="turbo_async.streams", compress=True)
    with pytest.raises(InvalidSubscription, match="^unexpected payload$"):
        names.unsign(signed)


def test_an_old_signature_expires_with_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(1_700_000_000))
    signed = names.sign("testapp:RoomStream", [5], {})
    monkeypatch.undo()
    with override_settings(TURBO_ASYNC={"SIGNATURE_MAX_AGE": 60}), pytest.raises(
        InvalidSubscription, match="^signature expired"
    ):
        names.unsign(signed)


def test_the_group_is_the_same_for_every_signature_of_one_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    first = names.sign("testapp:RoomStream", [5], {})
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(1_700_000_000))
    second = names.sign("testapp:RoomStream", [5], {})
    assert first != second
    assert names.group_name(*names.unsign(first)) == names.group_name(*names.unsign(second))


def test_the_group_differs_per_identity_and_fits_channels_limit() -> None:
    group = names.group_name("testapp:RoomStream", [5], {})
    assert group != names.group_name("testapp:RoomStream", [6], {})
    assert group.startswith("turbo_async.") and len(group) < 100


def test_the_group_does_not_depend_on_keyword_order() -> None:
    assert names.group_name("testapp:S", [], {"a": 1, "b": 2}) == names.group_name("testapp:S", [], {"b": 2, "a": 1})


def test_a_signed_name_reads_as_its_stream_for_people() -> None:
    assert names.readable(names.sign("testapp:RoomStream", [5], {"lang": "fr"})) == 'testapp:RoomStream(5, lang="fr")'
    assert names.readable(names.sign("testapp:TagListStream", [], {})) == "testapp:TagListStream"


def test_a_long_identity_is_compressed_and_still_reads() -> None:
    signed = names.sign("testapp:S", ["x" * 300], {})
    assert signed.startswith(".")  # Django's signing compressed it
    assert names.readable(signed) == f'testapp:S("{"x" * 186}...'


def test_a_tampered_or_expired_name_still_says_what_it_asked_for() -> None:
    signed = names.sign("testapp:RoomStream", [5], {})
    assert names.readable(signed[:-1] + ("A" if signed[-1] != "A" else "B")) == "testapp:RoomStream(5)"


@pytest.mark.parametrize("garbage", ["", "not a name", "a:b:c", signing.dumps({"x": 1}), signing.dumps([1, [], {}])])
def test_what_is_not_a_signed_name_reads_as_unreadable(garbage: str) -> None:
    assert names.readable(garbage) == "an unreadable name"


def test_a_remembered_signature_still_expires_with_max_age() -> None:
    """unsign remembers valid signatures (a reconnection storm verifies the same names thousands
    of times); the age is still checked on every call."""
    past = datetime.datetime.now().timestamp() - 120
    signer = signing.TimestampSigner(salt=conf.get().SIGNING_SALT)
    signer.timestamp = lambda: signing.b62_encode(int(past))  # type: ignore[method-assign]
    signed = signer.sign_object(["testapp:RoomStream", [5], {}], compress=True)
    assert names.unsign(signed) == ("testapp:RoomStream", [5], {})  # no max age: valid, remembered
    with override_settings(TURBO_ASYNC={"SIGNATURE_MAX_AGE": 60}), pytest.raises(
        InvalidSubscription, match="^signature expired"
    ):
        names.unsign(signed)


def test_a_remembered_signature_is_refused_under_another_secret_key() -> None:
    signed = names.sign("testapp:RoomStream", [6], {})
    assert names.unsign(signed)[1] == [6]
    with override_settings(SECRET_KEY="another-secret-key-entirely-of-fifty-characters-x"), pytest.raises(
        InvalidSubscription, match="bad signature"
    ):
        names.unsign(signed)
    with override_settings(TURBO_ASYNC={"SIGNING_SALT": "another salt"}), pytest.raises(
        InvalidSubscription, match="bad signature"
    ):
        names.unsign(signed)


def test_each_unsign_returns_its_own_payload() -> None:
    """What one caller changes in the args it got is not what the next caller gets."""
    signed = names.sign("testapp:RoomStream", [7], {"a": [1]})
    _, args, kwargs = names.unsign(signed)
    args.append(8)
    kwargs["a"].append(2)
    assert names.unsign(signed) == ("testapp:RoomStream", [7], {"a": [1]})
    assert names.unsign_with_group(signed)[1] == names.group_name("testapp:RoomStream", [7], {"a": [1]})
