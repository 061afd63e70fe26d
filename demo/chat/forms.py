from __future__ import annotations

from django import forms

from .models import Message, Room


class RoomForm(forms.ModelForm):
    class Meta:
        model = Room
        fields = ["name"]
        widgets = {
            "name": forms.TextInput(
                attrs={"placeholder": "New room name", "autocomplete": "off", "aria-label": "Room name"}
            )
        }
        error_messages = {"name": {"required": "Give the room a name."}}


class MessageForm(forms.ModelForm):
    class Meta:
        model = Message
        fields = ["text"]
        widgets = {
            "text": forms.TextInput(
                attrs={
                    "placeholder": "Write a message…",
                    "autocomplete": "off",
                    "aria-label": "Message",
                    # Turbo focuses it again each time the frame is re-rendered.
                    "autofocus": True,
                }
            )
        }
        error_messages = {"text": {"required": "Type something first."}}
