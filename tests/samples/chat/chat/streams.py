import turbo_async

from .models import Message, Room


class RoomListStream(turbo_async.Stream):
    def add_room(self, room):
        self.append("chat/components/room_list_item.html", {"room": room}, id="room_list")

    def delete_all(self):
        self.remove(selector="#room_list li")


class RoomStream(turbo_async.ModelStream):
    class Meta:
        model = Room

    def on_save(self, room, created, *args, **kwargs):
        if created:
            RoomListStream().add_room(room)

    def user_passes_test(self, user):
        return True


class MessageStream(turbo_async.ModelStream):
    class Meta:
        model = Message

    def on_save(self, message, created, *args, **kwargs):
        if created:
            message.room.stream.append("chat/components/message.html", {"message": message}, id="messages")
        else:
            message.room.stream.replace(
                "chat/components/message.html", {"message": message}, id=f"message-{message.id}"
            )

    def on_delete(self, message, *args, **kwargs):
        message.room.stream.remove(id=f"message-{message.id}")

    def user_passes_test(self, user):
        return True
