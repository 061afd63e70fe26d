"""Layer 0 (a leaf): the exceptions turbo_async raises, importable from anywhere in the package."""

from __future__ import annotations


class UnknownStream(LookupError):
    """A stream name or model label that no registered stream answers to."""


class InvalidSubscription(Exception):
    """A signed stream name that is tampered with, expired, or not of this site."""


class DeliveryError(Exception):
    """The channel layer could not be reached; a broadcast task is retried with backoff.

    ``streams`` maps each group whose frames were not sent to its stream's name: if the layer stays
    away past ``DELIVERY_MAX_AGE``, those streams' pages are told to refresh instead."""

    def __init__(self, message: str, streams: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.streams: dict[str, str] = dict(streams or {})


class PayloadError(ValueError):
    """An item of a broadcast task that this worker cannot read: malformed, or of a wire format
    version it does not know (:mod:`turbo_async.changes`). The item fails without a retry."""


class BatchHookError(Exception):
    """Hooks of a broadcast task of several items raised; the others' frames were delivered.
    Fails the task (Flower shows it), without a retry."""
