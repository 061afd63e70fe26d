"""Layer 0 (a leaf): the outbox table of ``TURBO_ASYNC = {"OUTBOX": "database"}``.

A change is written here in the transaction that saves the row, so it commits or rolls back with
it. After the commit the process's relay publishes the task and deletes the row; rows that a
killed process left behind are published by the sweep (:mod:`turbo_async.outbox`). Each row holds
the Celery message exactly as it will be sent (JSON only).
"""

from __future__ import annotations

from django.db import models


class OutboxEntry(models.Model):
    """One committed change (or ``stream.later`` action) waiting to be published."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    task = models.CharField(max_length=100)
    args = models.JSONField()
    kwargs = models.JSONField(default=dict)
    shadow = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["id"]  # commit order, per object and overall
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox entries"

    def __str__(self) -> str:
        return f"{self.shadow or self.task} {self.args!r}"
