"""Packaging: the metadata agrees with what the tests run and what the code imports; ``python -m
build`` makes an sdist and a wheel with the templates, static files and ``py.typed``; ``twine check``
passes; the wheel installs into a clean virtualenv (its dependencies come from the package index,
through pip's cache) where the app works. The README's install line is followed in a clean
virtualenv by ``tests/e2e/test_clean_install.py``."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import django
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import turbo_async
from tests.services import ROOT
from tests.wheel import built_distributions

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]

PACKAGE_DATA = [
    "turbo_async/py.typed",
    "turbo_async/templates/turbo/head.html",
    "turbo_async/templates/turbo/turbo_stream_source.html",
    "turbo_async/static/turbo_async/js/turbo-async.js",
]


def test_version_is_the_same_in_pyproject_and_the_package() -> None:
    assert PROJECT["version"] == turbo_async.__version__ == "0.1.0"


def requirements(names: list[str]) -> dict[str, Requirement]:
    """Requirements by canonical name; ``turbo-async[extra]`` is replaced by that extra's own."""
    found: dict[str, Requirement] = {}
    for line in names:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "turbo-async":
            for extra in requirement.extras:
                found.update(requirements(PROJECT["optional-dependencies"][extra]))
        else:
            found[name] = requirement
    return found


def classifier_versions(prefix: str) -> set[str]:
    """The ``X.Y`` versions of the classifiers under ``prefix``."""
    found = {c.removeprefix(prefix) for c in PROJECT["classifiers"] if c.startswith(prefix)}
    return {version for version in found if re.fullmatch(r"\d+\.\d+", version)}


def test_build_uses_a_setuptools_that_reads_the_license_expression() -> None:
    # `license = "MIT"` and `license-files` (PEP 639) are errors before setuptools 77.
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    [setuptools] = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0")


def test_classifiers_list_the_python_and_django_the_tests_run() -> None:
    running_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    running_django = f"{django.VERSION[0]}.{django.VERSION[1]}"
    assert classifier_versions("Programming Language :: Python :: ") == {running_python} == {"3.11"}
    assert classifier_versions("Framework :: Django :: ") == {running_django} == {"5.2"}


def test_requires_python_and_django_start_at_the_versions_the_tests_run() -> None:
    python = SpecifierSet(PROJECT["requires-python"])
    assert "3.11" in python and "3.10" not in python
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"  # type-checked as the oldest supported
    django_range = requirements(PROJECT["dependencies"])["django"].specifier
    assert "5.2" in django_range and "5.1.99" not in django_range


def test_dependencies_run_a_worker_on_redis() -> None:
    # kombu's Redis transport imports redis-py and (kombu 5.7) packaging: its `redis` extra.
    assert requirements(PROJECT["dependencies"])["kombu"].extras == {"redis"}


def test_the_uvicorn_extra_is_uvicorn_with_websocket_support() -> None:
    extras = PROJECT["optional-dependencies"]
    assert [Requirement(r).extras for r in extras["uvicorn"]] == [{"standard"}]
    assert "redis" not in extras  # redis-py is a dependency already


def third_party_imports(directory: Path) -> dict[str, set[str]]:
    """Distributions of the modules that files under ``directory`` import, with the importing files."""
    local = {"turbo_async", "tests", "demo", "workers"}
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in local or top in sys.stdlib_module_names:
                    continue
                for distribution in distributions.get(top, [f"<no distribution for {top}>"]):
                    found.setdefault(canonicalize_name(distribution), set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_package_declares_what_it_imports() -> None:
    declared = set(requirements(PROJECT["dependencies"])) | {"pytest"}  # pytest: only its pytest plugin
    # prometheus_client: turbo_async.metrics imports it when the metrics extra is installed.
    declared |= set(requirements(PROJECT["optional-dependencies"]["metrics"]))
    imported = third_party_imports(ROOT / "turbo_async")
    assert {name: files for name, files in imported.items() if name not in declared} == {}


def test_the_test_extra_declares_what_the_tests_import() -> None:
    declared = set(requirements(PROJECT["dependencies"])) | set(requirements(PROJECT["optional-dependencies"]["test"]))
    imported = third_party_imports(ROOT / "tests")
    assert {name: files for name, files in imported.items() if name not in declared} == {}


def test_changelog_has_the_current_version() -> None:
    assert f"## {turbo_async.__version__} - " in (ROOT / "CHANGELOG.md").read_text()


def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 turbo_async contributors\n")


@pytest.fixture
def dist() -> Path:
    """The run's one build (tests/wheel.py): tests/e2e/test_clean_install.py installs the same wheel."""
    return built_distributions()


def only(directory: Path, pattern: str) -> Path:
    [found] = directory.glob(pattern)
    return found


@pytest.mark.integration
def test_sdist_has_the_package_data_and_license(dist: Path) -> None:
    with tarfile.open(only(dist, "turbo_async-0.1.0.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert set(PACKAGE_DATA) | {"LICENSE", "pyproject.toml"} <= names


@pytest.mark.integration
def test_wheel_has_the_package_data_and_the_pytest_plugin(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "turbo_async-0.1.0-py3-none-any.whl")) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read("turbo_async-0.1.0.dist-info/entry_points.txt").decode()
    assert set(PACKAGE_DATA) | {"turbo_async-0.1.0.dist-info/licenses/LICENSE"} <= names
    assert "[pytest11]\nturbo_async = turbo_async.pytest_plugin" in entry_points
    assert not any(name.startswith(("tests/", "demo/", "workers/")) for name in names)


@pytest.mark.integration
def test_wheel_metadata_has_the_license_expression_python_range_and_extras(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "turbo_async-0.1.0-py3-none-any.whl")) as wheel:
        lines = wheel.read("turbo_async-0.1.0.dist-info/METADATA").decode().splitlines()
    assert {"License-Expression: MIT", "License-File: LICENSE", "Requires-Python: >=3.11"} <= set(lines)
    assert {"Requires-Dist: kombu[redis]>=5.7", "Requires-Dist: Django>=5.2"} <= set(lines)
    extras = {line.removeprefix("Provides-Extra: ") for line in lines if line.startswith("Provides-Extra: ")}
    assert extras == {"uvicorn", "metrics", "demo", "test", "dev"}
    assert 'Requires-Dist: uvicorn[standard]>=0.30; extra == "uvicorn"' in lines


@pytest.mark.integration
def test_twine_check_passes(dist: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


CLEAN_ENV_CHECK = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.staticfiles", "turbo_async"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    STATIC_URL="/static/",
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
)
django.setup()

import turbo_async
from django.contrib.staticfiles import finders
from django.template.loader import get_template

get_template("turbo/head.html")
assert finders.find("turbo_async/js/turbo-async.js")
import turbo_async.testing, turbo_async.checks, turbo_async.consumers  # noqa: E401
import kombu.transport.redis  # the worker's and the outbox's broker transport: kombu's redis extra
print("installed", turbo_async.__version__, turbo_async.__file__)
"""


@pytest.mark.integration
def test_wheel_installs_into_a_clean_virtualenv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # Without pip (nor, on 3.11, setuptools): seeding them takes seconds and the wheel must not need
    # them. This process's pip installs into it (--python), from pip's cache as a user's would.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # Not this process's PYTHONPATH: with the checkout on it, pip would find the checkout's
    # turbo_async.egg-info (left by the build) and install nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(only(dist, "*.whl"))],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    result = subprocess.run(
        [str(python), "-c", CLEAN_ENV_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"installed 0.1.0 {venv}")
