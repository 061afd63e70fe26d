"""Layer 0 (a leaf): stream identities, the signed name a page subscribes with and the group a
worker sends to.

A subscription is ``(stream_name, args, kwargs)`` signed with Django's signing (salted, with a
timestamp so that ``SIGNATURE_MAX_AGE`` can expire it). The Channels group is derived from the
unsigned identity, so every signature of one stream, whenever it was made, reaches one group.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.core import signing
from django.core.serializers.json import DjangoJSONEncoder

from . import conf
from .exceptions import InvalidSubscription

__all__ = [
    "Identity", "InvalidSubscription", "group_name", "identity", "readable", "sign", "unsign", "unsign_with_group",
]

Identity = tuple[str, list[Any], dict[str, Any]]

VERIFIED_NAMES = 8192
"""Signed names whose valid signature :func:`unsign` remembers (a few hundred bytes each)."""


def _canonical(stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    return json.dumps(
        [stream_name, args, kwargs], cls=DjangoJSONEncoder, separators=(",", ":"), sort_keys=True
    )


def identity(stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> Identity:
    """Normalise args and kwargs through JSON, as the browser will send them back."""
    name, args, kwargs = json.loads(_canonical(stream_name, args, kwargs))
    return name, args, kwargs


def group_name(stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The Channels group of one stream: ``turbo_async.<sha256 of the identity>`` (< 100 chars)."""
    digest = hashlib.sha256(_canonical(stream_name, args, kwargs).encode()).hexdigest()
    return f"turbo_async.{digest[:48]}"


def sign(stream_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The value of the ``signed-channel-name`` attribute of a subscription."""
    return signing.dumps(
        list(identity(stream_name, args, kwargs)), salt=conf.get().SIGNING_SALT, compress=True
    )


def unsign(signed_name: str) -> Identity:
    """Verify a signed name and return ``(stream_name, args, kwargs)``.

    Raises :class:`InvalidSubscription` with the reason when it is not valid.
    """
    return unsign_with_group(signed_name)[0]


def unsign_with_group(signed_name: str) -> tuple[Identity, str]:
    """:func:`unsign`, and the group of the identity (:func:`group_name`, remembered by payload:
    its canonical JSON and SHA-256 were a tenth of a web process's time per subscription)."""
    if not isinstance(signed_name, str) or not signed_name:
        raise InvalidSubscription("signed_channel_name must be a non-empty string")
    settings = conf.get()
    try:
        data, stamp = _verified(
            signed_name, settings.SIGNING_SALT, django_settings.SECRET_KEY,
            tuple(getattr(django_settings, "SECRET_KEY_FALLBACKS", ())),
        )
        value = json.loads(data.decode("latin-1"))  # as Django's JSONSerializer
    except signing.BadSignature:
        raise InvalidSubscription("bad signature") from None
    except (ValueError, UnicodeDecodeError, zlib.error):  # zlib/base64/json garbage under a valid signature
        raise InvalidSubscription("unreadable payload") from None
    max_age = settings.SIGNATURE_MAX_AGE
    if max_age is not None:
        age = time.time() - stamp
        if age > max_age:  # as Django's TimestampSigner words it
            raise InvalidSubscription(f"signature expired (Signature age {age} > {max_age} seconds)")
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], list)
        or not isinstance(value[2], dict)
    ):
        raise InvalidSubscription("unexpected payload")
    return (value[0], value[1], value[2]), _group_of(data)


@lru_cache(maxsize=VERIFIED_NAMES)
def _group_of(data: bytes) -> str:
    stream_name, args, kwargs = json.loads(data.decode("latin-1"))
    return group_name(stream_name, args, kwargs)


@lru_cache(maxsize=VERIFIED_NAMES)
def _verified(signed_name: str, salt: str, key: str, fallback_keys: tuple[str, ...]) -> tuple[bytes, int]:
    """The payload (JSON bytes) and timestamp of a signed name whose signature is valid (raises
    ``BadSignature`` otherwise), remembered: when thousands of pages resubscribe at once, most hold
    the names of a few popular streams, and the HMAC, base64 and zlib of each were a seventh of a
    web process's time per subscription (docs/benchmarks.rst, the avalanche). Only valid
    signatures are kept, by the key and salt that verified them; the age is checked on every
    call (:func:`unsign`), and the payload decoded anew (callers may change what they get)."""
    signer = signing.TimestampSigner(key=key, salt=salt, fallback_keys=list(fallback_keys))
    payload = signer.unsign(signed_name)  # the signature, over payload:timestamp
    stamp = signing.b62_decode(signed_name.rsplit(signer.sep, 2)[1])
    compressed = payload[:1] == "."
    data = signing.b64_decode((payload[1:] if compressed else payload).encode())
    return (zlib.decompress(data) if compressed else data), stamp


def readable(signed_name: str) -> str:
    """The stream a signed name stands for, for people: ``chat:RoomStream(1)``,
    ``testapp:PrivateStream``; ``"an unreadable name"`` when it is not one of ours.

    The signature is not checked: it names what a page asked for (in a refusal the page is told
    about, or a log line), and the payload is no secret: the page holds it in clear.
    """
    try:
        payload = signed_name.rsplit(":", 2)[0]  # payload:timestamp:signature
        compressed = payload.startswith(".")
        data = signing.b64_decode((payload[1:] if compressed else payload).encode())
        value = json.loads(zlib.decompress(data) if compressed else data)
        stream_name, args, kwargs = value
        shown = [json.dumps(arg) for arg in args] + [f"{key}={json.dumps(kwargs[key])}" for key in sorted(kwargs)]
    except Exception:  # anything a client may send
        return "an unreadable name"
    if not isinstance(stream_name, str):
        return "an unreadable name"
    text = f"{stream_name}({', '.join(shown)})" if shown else stream_name
    return text if len(text) <= 200 else text[:197] + "..."
