"""Packaging: ``python -m build`` makes an sdist and a wheel with the templates, static files and
``py.typed``; ``twine check`` passes; the wheel installs into a clean virtualenv (its dependencies
come from the package registry, through pip's cache) where the app works."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

import turbo_async
from tests.services import ROOT

PACKAGE_DATA = [
    "turbo_async/py.typed",
    "turbo_async/templates/turbo/head.html",
    "turbo_async/templates/turbo/turbo_stream_source.html",
    "turbo_async/static/turbo_async/js/turbo-async.js",
]


def test_version_is_the_same_in_pyproject_and_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == turbo_async.__version__ == "0.1.0"


def test_changelog_has_the_current_version() -> None:
    assert f"## {turbo_async.__version__} - " in (ROOT / "CHANGELOG.md").read_text()


def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 turbo_async contributors\n")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


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
print("installed", turbo_async.__version__, turbo_async.__file__)
"""


@pytest.mark.integration
def test_wheel_installs_into_a_clean_virtualenv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(only(dist, "*.whl"))],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    result = subprocess.run(
        [str(python), "-c", CLEAN_ENV_CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"installed 0.1.0 {venv}")
