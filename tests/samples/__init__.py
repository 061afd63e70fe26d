"""turbo-django 0.4.4's sample apps (its repository's ``experiments/``: chat, reminders,
components_demo) with only the rename ``turbo`` -> ``turbo_async``, as one project that
tests/e2e/test_samples.py serves with uvicorn and a Celery worker.

Each sample keeps its own layout: ``chat/chat``, ``reminders/reminders`` and
``components_demo/app`` are the apps, importable as ``chat``, ``reminders`` and ``app`` as their
``manage.py`` made them (settings.py puts the three sample directories on ``sys.path``).
This package is the project, set up as the README's step 1 says (a Celery app loaded here).
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
