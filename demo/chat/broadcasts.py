"""The room list: a plain Stream (not tied to one row), like turbo-django's RoomListStream."""

from __future__ import annotations

import turbo_async as turbo

from .models import Room


@turbo.register
class RoomListStream(turbo.Stream):
    def add(self, room: Room) -> None:
        """Append a new room to every open room list, after the transaction commits."""
        self.later.append("chat/room_item.html", {"room": room}, id="rooms")
