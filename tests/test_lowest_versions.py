"""scripts/lowest_versions.py: the pins of ``make test-lowest`` come from pyproject.toml's floors."""

from __future__ import annotations

import runpy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.services import ROOT

LOWEST: dict[str, Any] = runpy.run_path(str(ROOT / "scripts" / "lowest_versions.py"))
constraints = LOWEST["constraints"]


def pyproject(tmp_path: Path, *dependencies: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\ndependencies = [" + ", ".join(f"{d!r}" for d in dependencies) + "]\n")
    return path


def test_each_floor_becomes_a_pin_without_its_extras(tmp_path: Path) -> None:
    path = pyproject(tmp_path, "Django>=5.2", "kombu[redis]>=5.7", "redis>=6.4,<9", "x>=1; python_version < '4'")
    assert constraints(path) == ["Django==5.2", "kombu==5.7", "redis==6.4", 'x==1; python_version < "4"']


@pytest.mark.parametrize("dependency", ["Django", "Django<6", "Django==5.2", "Django>=5.2,>=5.1"])
def test_a_dependency_without_one_floor_is_refused(tmp_path: Path, dependency: str) -> None:
    with pytest.raises(ValueError, match="needs exactly one '>=' bound"):
        constraints(pyproject(tmp_path, dependency))


def test_every_runtime_dependency_of_the_project_is_pinned() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = constraints()
    assert len(pins) == len(declared)
    assert all("==" in pin for pin in pins)
