from __future__ import annotations

import time

import turbo_async as turbo

from .models import Document, Message, Probe, ProbeRun, Room, Tag


class DocumentStream(turbo.ModelStream):
    class Meta:
        model = Document

    def on_save(self, document, created, *args, **kwargs):
        self.update(text=document.title, id=f"document-{document.pk}")

    def on_delete(self, document, *args, **kwargs):
        self.remove(id=f"document-{document.pk}")


class TagStream(turbo.ModelStream):
    class Meta:
        model = Tag

    def on_save(self, tag, created, *args, **kwargs):
        TagListStream().append("testapp/tag.html", {"tag": tag}, id="tags")


class TagListStream(turbo.Stream):
    pass


class PrivateStream(turbo.Stream):
    """Only staff may subscribe (security tests: ``user_passes_test`` on every subscribe)."""

    def user_passes_test(self, user):
        return bool(user is not None and user.is_authenticated and user.is_staff)


class NotificationComponent(turbo.UserBroadcastComponent):
    """One user's notification counter (security tests: it reaches only its own user)."""

    template_name = "testapp/notification.html"


class ProbeStream(turbo.ModelStream):
    """Failure tests: a hook that counts its runs (rows of ProbeRun, not streamed), and can be slow
    (to kill its worker mid-task) or raise."""

    class Meta:
        model = Probe

    def on_save(self, probe, created, *args, **kwargs):
        ProbeRun.objects.using(kwargs.get("using", "default")).create(probe_id=probe.pk)
        if probe.sleep:
            time.sleep(probe.sleep)
        if probe.fail:
            raise RuntimeError(f"probe {probe.pk} fails on purpose")
        self.update(text=probe.name, id=f"probe-{probe.pk}")


class RoomStream(turbo.ModelStream):
    """A room's page subscribes to it; it has no hooks (saving a room broadcasts nothing)."""

    class Meta:
        model = Room


class MessageStream(turbo.ModelStream):
    """Appends a created message to its room's ``#messages``, replaces an edited one and removes
    a deleted one (turbo-django's chat example)."""

    class Meta:
        model = Message

    def on_save(self, message, created, *args, **kwargs):
        if created:
            message.room.stream.append("testapp/message.html", {"message": message}, id="messages")
        else:
            message.room.stream.replace(
                "testapp/message.html", {"message": message}, id=f"message-{message.id}"
            )

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"message-{message.id}")


class RoomListStream(turbo.Stream):
    """The list of rooms: a plain stream, not tied to one row."""

    def add(self, room):
        """Append a new room to every open room list, after the transaction commits."""
        self.later.append("testapp/room_item.html", {"room": room}, id="rooms")
