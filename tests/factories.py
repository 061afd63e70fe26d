"""Factories of the demo's chat models, for the demo's own tests (tests/test_demo_*.py,
tests/e2e/test_chat.py, tests/integration/test_flower.py).

The library's tests build the test app's rows instead: tests/testapp/factories.py. The models are
named by label, so that importing this module does not import the demo.
"""

from __future__ import annotations

import factory


class RoomFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "chat.Room"

    name = factory.Sequence(lambda n: f"Room {n}")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "chat.Message"

    room = factory.SubFactory(RoomFactory)
    text = factory.Faker("sentence")
