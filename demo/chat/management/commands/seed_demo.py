"""``python demo/manage.py seed_demo``: sample rooms and messages, only when there are no rooms."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

import turbo_async
from demo.chat.models import Message, Room

# Room -> (author, text) of its first messages.
SAMPLE = {
    "General": [
        ("turbo_async", "Welcome to the turbo_async demo!"),
        ("turbo_async", "Open this room in two windows and say hi."),
    ],
    "Random": [("turbo_async", "Messages are rendered by a Celery worker after the transaction commits.")],
    "Help": [("turbo_async", "Every broadcast shows up in Flower's task list, named after its stream hook.")],
}


class Command(BaseCommand):
    help = "Create sample rooms and messages when the database has no rooms yet."

    def handle(self, *args: Any, **options: Any) -> None:
        if Room.objects.exists():
            self.stdout.write("Rooms exist already; nothing to seed.")
            return
        # Nobody is subscribed yet, so there is nothing to broadcast: suppress() queues no tasks.
        with turbo_async.suppress(), transaction.atomic():
            for name, messages in SAMPLE.items():
                room = Room.objects.create(name=name)
                Message.objects.bulk_create(
                    Message(room=room, author=author, text=text) for author, text in messages
                )
        self.stdout.write(f"Created {len(SAMPLE)} sample rooms.")
