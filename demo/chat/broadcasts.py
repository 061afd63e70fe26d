"""The room list: a plain Stream (not tied to one row), like turbo-django's RoomListStream.

Each room in the list shows its message count. A new or deleted message asks the open room lists
to refresh (:meth:`RoomListStream.changed`, called by the views): a worker sends one ``refresh`` per burst of changes
(debounced across workers), and the page morphs into its new version
(``{% turbo_refreshes_with method="morph" scroll="preserve" %}`` in chat/room_list.html), so the
counts change in place. The page whose own request made the change ignores that refresh (Turbo's
request id, with ``turbo_async.middleware.TurboRequestIdMiddleware`` in ``MIDDLEWARE``).
"""

from __future__ import annotations

import turbo_async as turbo

from .models import Room


@turbo.register
class RoomListStream(turbo.Stream):
    def add(self, room: Room) -> None:
        """Append a new room to every open room list, after the transaction commits."""
        self.later.append("chat/room_item.html", {"room": room}, id="rooms")

    def changed(self) -> None:
        """A room's message count changed: after the commit, the open room
        lists refresh, one refresh per burst of changes, by morphing into the new list."""
        self.later.refresh()
