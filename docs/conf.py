"""Sphinx configuration of turbo_async's documentation (``make docs``).

The build needs no network: no intersphinx, the bundled alabaster theme. Autodoc imports the
package under the test suite's settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import turbo_async  # noqa: E402

project = "turbo_async"
author = "turbo_async contributors"
copyright = "2026, turbo_async contributors"
release = turbo_async.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options: dict[str, object] = {}

templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"] if (Path(__file__).parent / "_static").is_dir() else []

html_theme_options = {"description": "Turbo Streams for Django, rendered by Celery workers."}
pygments_style = "sphinx"
