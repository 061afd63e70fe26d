"""The sdist and wheel of this checkout, built once per test run.

``python -m build`` (an isolated build environment, then the sdist, then the wheel from the sdist,
as a release is made) takes several seconds; tests/test_packaging.py and
tests/e2e/test_clean_install.py both need its output, and it does not change during a run. The
first caller builds into the run's temporary directory; later callers get the same directory.
A failed build is not remembered: each test that needs it reports the build's output.

``TURBO_TEST_INSTALL_TIMEOUT`` (seconds, 180) bounds the build on a slow machine.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.services import ROOT

BUILD_TIMEOUT = float(os.environ.get("TURBO_TEST_INSTALL_TIMEOUT", "180"))


@functools.cache
def built_distributions() -> Path:
    """The directory holding exactly one sdist and one wheel of this checkout."""
    # Under the run's temporary directory (removed at the end of the run, tests/conftest.py).
    out = Path(tempfile.mkdtemp(prefix="dist-", dir=os.environ["TURBO_TEST_TMP"]))
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out
