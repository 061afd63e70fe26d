from __future__ import annotations

import uuid

from django.db import models


class Document(models.Model):
    """A streamed model with a UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=100)
    body = models.TextField(blank=True)
    published = models.DateField(null=True, blank=True)


class Tag(models.Model):
    """A streamed model with a string primary key."""

    slug = models.SlugField(primary_key=True)
    label = models.CharField(max_length=100)


class Plain(models.Model):
    """A model without a stream (registry tests attach throwaway streams to it)."""

    name = models.CharField(max_length=100)


class Probe(models.Model):
    """A streamed model whose hook misbehaves on request (failure tests): it counts its runs,
    then sleeps ``sleep`` seconds and raises if ``fail`` is set."""

    name = models.CharField(max_length=100)
    sleep = models.FloatField(default=0)
    fail = models.BooleanField(default=False)

    @property
    def runs(self) -> int:
        """How many times the hook ran (counted in another table: a write to this row would
        look like a concurrent edit to the task's re-check)."""
        return self.hook_runs.count()


class ProbeRun(models.Model):
    probe = models.ForeignKey(Probe, on_delete=models.CASCADE, related_name="hook_runs")


class Room(models.Model):
    """A chat room: the library's tests broadcast to ``room.stream`` (chat-shaped, like the
    demo's, without its views)."""

    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    """A message of a room: ``MessageStream`` appends, replaces and removes it on its room's page."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text
