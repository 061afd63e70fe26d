"""The project's own quality gates, so that ``make test`` covers them: ruff, mypy (strict, with
django-stubs, celery-types and types-channels) and the Sphinx build with warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.services import ROOT

BIN = Path(sys.executable).parent


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_is_clean() -> None:
    result = run(str(BIN / "ruff"), "check", "turbo_async", "workers", "demo", "tests", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy")  # files and options: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(tmp_path / "html"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "index.html").is_file()
