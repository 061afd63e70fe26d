"""Layer 0 (a leaf): the exceptions turbo_async raises, importable from anywhere in the package."""

from __future__ import annotations


class UnknownStream(LookupError):
    """A stream name or model label that no registered stream answers to."""


class InvalidSubscription(Exception):
    """A signed stream name that is tampered with, expired, or not of this site."""


class DeliveryError(Exception):
    """The channel layer could not be reached; a broadcast task is retried with backoff."""
