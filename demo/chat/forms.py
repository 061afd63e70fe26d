from __future__ import annotations

import math
from typing import Any

from django import forms

from .models import ANONYMOUS, Message, Room

EDIT_COLUMNS = 60
"""About how many characters fit on one line of the edit field (for its starting height)."""
EDIT_MAX_ROWS = 12


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
    """The composer: the sender's name (optional, remembered by the view) and the message."""

    class Meta:
        model = Message
        fields = ["author", "text"]
        widgets = {
            "author": forms.TextInput(
                attrs={"placeholder": "Your name", "autocomplete": "nickname", "aria-label": "Your name"}
            ),
            "text": forms.TextInput(
                attrs={
                    "placeholder": "Write a message…",
                    "autocomplete": "off",
                    "aria-label": "Message",
                    # Turbo focuses it again each time the frame is re-rendered.
                    "autofocus": True,
                }
            ),
        }
        error_messages = {"text": {"required": "Type something first."}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The model's default names those who leave it empty: not a required field here.
        self.fields["author"].required = False

    def clean_author(self) -> str:
        return str(self.cleaned_data.get("author") or "").strip() or ANONYMOUS


def edit_rows(text: str) -> int:
    """Rows that show all of ``text`` (each line wrapped at about EDIT_COLUMNS), at most
    EDIT_MAX_ROWS: the starting height of the edit field, which the browser then fits to the text
    as it changes (``field-sizing: content`` in chat.css)."""
    rows = sum(max(1, math.ceil(len(line) / EDIT_COLUMNS)) for line in text.splitlines() or [""])
    return min(rows, EDIT_MAX_ROWS)


class MessageEditForm(forms.ModelForm):
    """The inline edit form: the text only (a message keeps its author), in a textarea as tall
    as the message."""

    class Meta:
        model = Message
        fields = ["text"]
        widgets = {"text": forms.Textarea(attrs={"aria-label": "Message", "class": "edit-text"})}
        error_messages = {"text": {"required": "Type something first."}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        text = str(self["text"].value() or "")
        self.fields["text"].widget.attrs.update(rows=edit_rows(text), cols=EDIT_COLUMNS)
