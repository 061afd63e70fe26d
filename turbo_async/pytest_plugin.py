"""Layer 10: the pytest fixtures of turbo_async, installed with the package (entry point ``pytest11``).

``turbo_broadcasts`` records every frame broadcast during the test, with the pipeline running in
the test's process. In a ``db`` test (one transaction that never commits) run the on-commit
callbacks with pytest-django's ``django_capture_on_commit_callbacks``::

    def test_create_appends(turbo_broadcasts, django_capture_on_commit_callbacks):
        room = Room.objects.create(name="Lobby")
        with django_capture_on_commit_callbacks(execute=True):
            Message.objects.create(room=room, text="Hi")
        turbo_broadcasts.assert_broadcasts(room, count=1, action="append")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import BroadcastRecorder, capture_broadcasts


@pytest.fixture
def turbo_broadcasts() -> Iterator[BroadcastRecorder]:
    """A :class:`turbo_async.testing.BroadcastRecorder` active for the whole test."""
    with capture_broadcasts(on_commit=False) as recorder:
        yield recorder
