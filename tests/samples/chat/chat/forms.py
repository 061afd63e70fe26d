from django import forms

from .models import Room


class RoomForm(forms.ModelForm):
    name = forms.CharField(label="Room Name", required=False)

    class Meta:
        model = Room
        fields = ("name",)
