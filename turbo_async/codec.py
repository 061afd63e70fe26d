"""Layer 0 (a leaf): the JSON codec of ``stream.later``'s context.

Model instances travel as ``{"__model__": "chat.message", "pk": 5}`` and are reloaded by the
worker; ``mark_safe`` strings as ``{"__safe__": "..."}`` so they stay safe there; anything else
must be JSON-serialisable, and fails early, in the caller, when it is not.
"""

from __future__ import annotations

import json
from typing import Any

from django.apps import apps
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.safestring import SafeData, mark_safe

MODEL_KEY = "__model__"
SAFE_KEY = "__safe__"


def encode(value: Any) -> Any:
    """Replace model instances by references; fail early on what JSON cannot carry."""
    if isinstance(value, models.Model):
        if value.pk is None:
            raise ValueError(f"Cannot send an unsaved {type(value).__name__} to a worker; save it first.")
        return {MODEL_KEY: value._meta.label_lower, "pk": json.loads(json.dumps(value.pk, cls=DjangoJSONEncoder))}
    if isinstance(value, SafeData):  # mark_safe()/format_html(): stays safe in the worker
        return {SAFE_KEY: str(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    try:
        return json.loads(json.dumps(value, cls=DjangoJSONEncoder))
    except TypeError:
        raise TypeError(
            f"stream.later cannot send {type(value).__name__} {value!r} to a worker: use model "
            "instances or JSON-serialisable values in the context."
        ) from None


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`, in the worker: references become reloaded instances."""
    if isinstance(value, dict):
        if set(value) == {MODEL_KEY, "pk"}:
            model = apps.get_model(value[MODEL_KEY])
            return model._base_manager.get(pk=value["pk"])
        if set(value) == {SAFE_KEY}:
            return mark_safe(value[SAFE_KEY])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
