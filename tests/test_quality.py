"""The project's own quality gates, so that ``make test`` covers them: ruff, mypy (strict, with
django-stubs, celery-types and types-channels) and the Sphinx build with warnings as errors."""

from __future__ import annotations

import runpy
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


def test_the_package_has_no_import_cycle() -> None:
    result = run(sys.executable, "scripts/check_imports.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "No import cycle in turbo_async."


def test_the_import_check_finds_a_cycle_and_a_late_import(tmp_path: Path) -> None:
    """The checker itself: a package whose modules import each other, one of them late."""
    check = runpy.run_path(str(ROOT / "scripts" / "check_imports.py"))["check"]
    package = tmp_path / "turbo_async"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    assert check(tmp_path) == [
        "turbo_async/b.py:2: function-local import of turbo_async.a; import it at the top of the module "
        "(only AppConfig.ready may import late)",
        "import cycle: turbo_async.a <-> turbo_async.b",
    ]
