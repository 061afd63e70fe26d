"""Factories of the test app's models, for the library's own tests.

(tests/factories.py builds the demo's rows, for the demo's tests.)
"""

from __future__ import annotations

import factory

from tests.testapp.models import Document, Message, Probe, Room, Tag


class RoomFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Room

    name = factory.Sequence(lambda n: f"Room {n}")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    room = factory.SubFactory(RoomFactory)
    text = factory.Faker("sentence")


class DocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Document

    title = factory.Sequence(lambda n: f"Document {n}")


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag

    slug = factory.Sequence(lambda n: f"tag-{n}")
    label = factory.Sequence(lambda n: f"Tag {n}")


class ProbeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Probe

    name = factory.Sequence(lambda n: f"Probe {n}")
