"""Layer 0 (a leaf): stream identities, the signed name a page subscribes with and the group a
worker sends to.

A subscription is ``(stream_name, args, kwargs)`` signed with Django's signing (salted, with a
timestamp so that ``SIGNATURE_MAX_AGE`` can expire it). The Channels group is derived from the
unsigned identity, so every signature of one stream, whenever it was made, reaches one group.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

from django.core import signing
from django.core.serializers.json import DjangoJSONEncoder

from . import conf
from .exceptions import InvalidSubscription

__all__ = ["Identity", "InvalidSubscription", "group_name", "identity", "readable", "sign", "unsign"]

Identity = tuple[str, list[Any], dict[str, Any]]


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
    if not isinstance(signed_name, str) or not signed_name:
        raise InvalidSubscription("signed_channel_name must be a non-empty string")
    settings = conf.get()
    try:
        value = signing.loads(
            signed_name, salt=settings.SIGNING_SALT, max_age=settings.SIGNATURE_MAX_AGE
        )
    except signing.SignatureExpired as exc:
        raise InvalidSubscription(f"signature expired ({exc})") from None
    except signing.BadSignature:
        raise InvalidSubscription("bad signature") from None
    except (ValueError, UnicodeDecodeError):  # zlib/base64/json garbage under a valid signature
        raise InvalidSubscription("unreadable payload") from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], list)
        or not isinstance(value[2], dict)
    ):
        raise InvalidSubscription("unexpected payload")
    return value[0], value[1], value[2]


def readable(signed_name: str) -> str:
    """The stream a signed name stands for, for people: ``chat:RoomStream(1)``,
    ``testapp:PrivateStream``; ``"an unreadable name"`` when it is not one of ours.

    The signature is not checked: it names what a page asked for (in a refusal the page is told
    about, or a log line), and the payload is no secret: the page holds it in clear.
    """
    try:
        payload = signed_name.rsplit(":", 2)[0]  # payload:timestamp:signature
        compressed = payload.startswith(".")
        data = signing.b64_decode(payload.lstrip(".").encode())
        value = json.loads(zlib.decompress(data) if compressed else data)
        stream_name, args, kwargs = value
        shown = [json.dumps(arg) for arg in args] + [f"{key}={json.dumps(kwargs[key])}" for key in sorted(kwargs)]
    except Exception:  # anything a client may send
        return "an unreadable name"
    if not isinstance(stream_name, str):
        return "an unreadable name"
    text = f"{stream_name}({', '.join(shown)})" if shown else stream_name
    return text if len(text) <= 200 else text[:197] + "..."
