"""The project's own quality gates, so that ``make test`` covers them: ruff, mypy (strict, with
django-stubs, celery-types and types-channels) and the Sphinx build with warnings as errors."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_the_package_keeps_its_layers() -> None:
    result = run(sys.executable, "scripts/check_imports.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "No import climbs a layer or forms a cycle in turbo_async."


def import_check() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "scripts" / "check_imports.py"))


def write_package(root: Path, modules: dict[str, str]) -> None:
    package = root / "turbo_async"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source)


def test_the_import_check_finds_a_cycle_and_a_late_import(tmp_path: Path) -> None:
    """The checker itself: a package whose modules import each other, one of them late."""
    write_package(tmp_path, {
        "a": '"""Layer 0."""\nfrom . import b\n',
        "b": '"""Layer 0."""\ndef f():\n    from .a import x\n',
    })
    assert import_check()["check"](tmp_path, {"__init__": 2, "a": 0, "b": 0}) == [
        "turbo_async/b.py:3: function-local import of turbo_async.a; import it at the top of the module "
        "(only AppConfig.ready may import late)",
        "import cycle: turbo_async.a <-> turbo_async.b",
    ]


def test_the_import_check_refuses_an_import_that_climbs(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "low": '"""Layer 0."""\nfrom . import high\n',
        "high": '"""Layer 1."""\n',
        "beside": '"""Layer 0."""\nfrom . import low\n',
    })
    layers = {"__init__": 5, "low": 0, "high": 1, "beside": 0}
    assert import_check()["check"](tmp_path, layers) == [
        "turbo_async/low.py:2: low (layer 0) imports high (layer 1), a higher layer",
    ]


def test_the_import_check_refuses_a_module_without_a_layer(tmp_path: Path) -> None:
    write_package(tmp_path, {"known": "", "new": ""})
    (tmp_path / "turbo_async" / "sub").mkdir()
    (tmp_path / "turbo_async" / "sub" / "__init__.py").write_text("")
    (tmp_path / "turbo_async" / "sub" / "inner.py").write_text("")
    assert import_check()["check"](tmp_path, {"__init__": 1, "known": 0, "sub": 0}) == [
        "turbo_async/new.py: 'new' has no layer; add it to LAYERS in scripts/check_imports.py "
        "and to docs/architecture.rst",
    ]


def test_the_import_check_refuses_a_docstring_that_names_another_layer(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "right": '"""Layer 0 (a leaf): fine."""\n',
        "wrong": '"""Layer 3: says 3."""\n',
        "silent": '"""No layer said."""\n',
    })
    (tmp_path / "turbo_async" / "sub").mkdir()
    (tmp_path / "turbo_async" / "sub" / "__init__.py").write_text("")
    (tmp_path / "turbo_async" / "sub" / "inner.py").write_text('"""Layer 2: the package\'s layer is 1."""\n')
    layers = {"__init__": 1, "right": 0, "wrong": 0, "silent": 0, "sub": 1}
    assert import_check()["check"](tmp_path, layers) == [
        "turbo_async/silent.py: its docstring does not say 'Layer 0'",
        "turbo_async/sub/inner.py: its docstring says Layer 2, LAYERS says 'sub' is layer 1",
        "turbo_async/wrong.py: its docstring says Layer 3, LAYERS says 'wrong' is layer 0",
    ]


def architecture_table(text: str) -> dict[str, int]:
    """Module -> layer from docs/architecture.rst's list-table: rows of ``* - N`` / ``- ``names````."""
    table = text[text.index(".. list-table::"):]
    table = table[: table.index("\nSo one save reads")]
    layers: dict[str, int] = {}
    for row in re.split(r"^   \* - ", table, flags=re.MULTILINE)[2:]:  # [0] options, [1] the header
        layer, modules = re.split(r"^     - ", row, flags=re.MULTILINE)[:2]
        for name in re.findall(r"``([\w.]+)``", modules):
            assert name not in layers, f"{name} is in two rows of the table"
            layers[name] = int(layer)
    return layers


def test_the_architecture_table_names_every_module_in_its_layer() -> None:
    documented = architecture_table((ROOT / "docs" / "architecture.rst").read_text())
    assert documented == import_check()["LAYERS"]
