"""The chat's views. They only write rows: every page that shows the room learns about the change
from its stream (rendered by a Celery worker after commit), the sender's own page included.

Forms live in Turbo Frames and follow Turbo's rule "POST, then redirect": a frame request is sent
back to a GET URL that renders the same frame (an empty form, or the message as it now is), a
plain browser request (no JavaScript) back to the room. Forms rendered by a worker (in
``chat/message.html``) cannot carry a CSRF token: ``chat/chat.js`` sends it as a header.

The demo has no accounts: a sender types a name in the composer, and the session remembers it for
their next messages.
"""

from __future__ import annotations

from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .broadcasts import RoomListStream
from .forms import MessageEditForm, MessageForm, RoomForm
from .models import ANONYMOUS, Message, Room

RECENT_MESSAGES = 100
"""How many messages the room page shows (the newest ones)."""
AUTHOR_SESSION_KEY = "chat_author"
"""Where the session keeps the name the visitor last sent a message under."""


def _message_form(request: HttpRequest) -> MessageForm:
    """The composer, bound to the POST if any, else empty with the remembered name filled in."""
    if request.method == "POST":
        return MessageForm(request.POST)
    return MessageForm(initial={"author": request.session.get(AUTHOR_SESSION_KEY, "")})


def _in_frame(request: HttpRequest) -> bool:
    """Whether Turbo sent this request on behalf of a ``<turbo-frame>``."""
    return "Turbo-Frame" in request.headers


def _see_other(url: str) -> HttpResponseRedirect:
    """303 See Other: what Turbo expects after a form submission."""
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


@csrf_protect
@require_GET
def room_list(request: HttpRequest) -> HttpResponse:
    rooms = Room.objects.annotate(message_count=Count("messages"))  # shown, and refreshed by morphing
    return render(request, "chat/room_list.html", {"rooms": rooms, "form": RoomForm()})


@csrf_protect
@require_http_methods(["GET", "POST"])
def room_create(request: HttpRequest) -> HttpResponse:
    """The "new room" frame. A created room reaches every open room list through its stream."""
    form = RoomForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            room = form.save()
            RoomListStream().add(room)
            return _see_other(reverse("chat:room_create") if _in_frame(request) else room.get_absolute_url())
        return render(request, "chat/room_form.html", {"form": form}, status=422)
    return render(request, "chat/room_form.html", {"form": form})


@csrf_protect
@require_GET
def room_detail(request: HttpRequest, pk: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=pk)
    newest = list(room.messages.order_by("-created_at", "-id")[:RECENT_MESSAGES])
    return render(
        request,
        "chat/room_detail.html",
        {"room": room, "messages": newest[::-1], "form": _message_form(request)},
    )


@csrf_protect
@require_http_methods(["GET", "POST"])
def message_create(request: HttpRequest, pk: int) -> HttpResponse:
    """The "new message" frame. The message itself arrives through the room's stream."""
    room = get_object_or_404(Room, pk=pk)
    form = _message_form(request)
    if request.method == "POST":
        if form.is_valid():
            author = form.cleaned_data["author"]
            Message.objects.create(room=room, author=author, text=form.cleaned_data["text"])
            RoomListStream().changed()  # the room's message count
            if author == ANONYMOUS:
                request.session.pop(AUTHOR_SESSION_KEY, None)
            else:
                request.session[AUTHOR_SESSION_KEY] = author
            if _in_frame(request):
                return _see_other(reverse("chat:message_create", args=[room.pk]))
            return _see_other(room.get_absolute_url())
        return render(request, "chat/message_form.html", {"room": room, "form": form}, status=422)
    return render(request, "chat/message_form.html", {"room": room, "form": form})


@csrf_protect
@require_GET
def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One message; its ``message-<pk>-edit`` frame is where "Cancel" and "Save" lead back to."""
    message = get_object_or_404(Message.objects.select_related("room"), pk=pk)
    return render(request, "chat/message_detail.html", {"message": message, "room": message.room})


@csrf_protect
@require_http_methods(["GET", "POST"])
def message_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """The inline edit form (frame ``message-<pk>-edit``); every page gets the new text by stream."""
    message = get_object_or_404(Message.objects.select_related("room"), pk=pk)
    # Its own ids: the room page already has the composer's "id_text".
    form = MessageEditForm(request.POST or None, instance=message, auto_id=f"message-{message.pk}-%s")
    if request.method == "POST":
        if form.is_valid():
            form.save()
            if _in_frame(request):
                return _see_other(reverse("chat:message", args=[message.pk]))
            return _see_other(message.room.get_absolute_url())
        status = 422
    else:
        status = 200
    context = {"message": message, "room": message.room, "form": form}
    return render(request, "chat/message_edit.html", context, status=status)


@csrf_protect
@require_POST
def message_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete; the room's stream removes the message from every page, the sender's included."""
    message = get_object_or_404(Message, pk=pk)
    room = message.room
    message.delete()
    RoomListStream().changed()  # the room's message count
    if _in_frame(request):
        # No content and no Content-Type: Turbo leaves the frame alone (and does not remember this
        # URL as the frame's src) until the stream's "remove" arrives.
        response = HttpResponse(status=204)
        del response["Content-Type"]
        return response
    return _see_other(room.get_absolute_url())
