from __future__ import annotations

from django.db import models
from django.urls import reverse


class Room(models.Model):
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("chat:room", args=[self.pk])


ANONYMOUS = "Anonymous"
"""The author of a message sent without a name (and of the messages from before authors)."""


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    # A name typed in the composer (the demo has no accounts); the session remembers it.
    author = models.CharField(max_length=40, default=ANONYMOUS)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text
