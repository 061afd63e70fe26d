"""The numbers of the README and the docs against their sources (issue 25.7).

- Every test they cite exists: a ``tests/...py::name`` citation names a test function (or class)
  defined in that file, a ``tests/...py`` path names a file, a bare ``test_...`` name is defined in
  some test file. A renamed or deleted test fails here instead of leaving a guarantee that cites
  nothing.
- Every default they state for a ``TURBO_ASYNC`` key is the default of ``turbo_async.conf``: the
  README's table, docs/settings.rst's block, and prose of the form ``KEY`` (N s).

Whether a bound beside a citation is the one the test asserts is for people to read (the audit
of issue 25.7 compared each); this keeps the names and defaults from drifting unseen."""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache

import pytest

from tests.services import ROOT
from turbo_async.conf import TurboAsyncSettings

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]
CITATION = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+)(?:\[[^\]\s`]*\])?)?")
BARE_NAME = re.compile(r"(?<![:\w])``(test_\w+)``")  # a test named without its file


def citations() -> list[tuple[str, int, str, str | None]]:
    found = []
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), start=1):
            for match in CITATION.finditer(line):
                found.append((document.relative_to(ROOT).as_posix(), number, match[1], match[2]))
    return found


TABLE_OF_ONE_FILE = re.compile(r"Test \(``(tests/[\w/]+\.py)``\)")  # a table's header: its tests' file


def bare_names() -> list[tuple[str, int, str, str | None]]:
    """(document, line, name, the file the table's header names or ``None``)."""
    found = []
    for document in DOCUMENTS:
        in_file = None
        for number, line in enumerate(document.read_text().splitlines(), start=1):
            if line.startswith(".. list-table::"):
                in_file = None
            if match := TABLE_OF_ONE_FILE.search(line):
                in_file = match[1]
            found += [(document.relative_to(ROOT).as_posix(), number, name, in_file) for name in BARE_NAME.findall(line)]
    return found


@cache
def defined(path: str) -> frozenset[str]:
    """The functions and classes defined in ``path``, at any depth (test methods included)."""
    tree = ast.parse((ROOT / path).read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, kinds))


def test_the_docs_cite_tests() -> None:
    """The pattern finds what the docs cite (so the test below cannot pass by matching nothing)."""
    cited = citations()
    assert len(cited) > 100
    assert sum(name is not None for *_, name in cited) > 50
    assert len(bare_names()) > 20


def label(citation: tuple[object, ...]) -> str:
    document, line, *rest = citation
    return f"{document}:{line}:{rest[-1] or rest[0]}"


@pytest.mark.parametrize(("document", "line", "path", "name"), citations(), ids=[label(c) for c in citations()])
def test_a_cited_test_exists(document: str, line: int, path: str, name: str | None) -> None:
    assert (ROOT / path).is_file(), f"{document}:{line} cites {path}, which does not exist"
    if name is not None:
        assert name in defined(path), f"{document}:{line} cites {path}::{name}, which {path} does not define"


@pytest.mark.parametrize(("document", "line", "name", "in_file"), bare_names(), ids=[label(c[:3]) for c in bare_names()])
def test_a_test_named_without_its_file_exists(document: str, line: int, name: str, in_file: str | None) -> None:
    """In a table whose header names the file (``Test (tests/x.py)``), in that file; elsewhere, in
    some test file."""
    if in_file is not None:
        assert name in defined(in_file), f"{document}:{line} cites {name} under {in_file}, which does not define it"
        return
    files = [path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")]
    assert any(name in defined(path) for path in files), f"{document}:{line} cites {name}, which no test file defines"


DEFAULTS = {field.name: field.default for field in dataclasses.fields(TurboAsyncSettings)}
README_ROW = re.compile(r"^\| `([A-Z_]+)` \| `([^`]+)` \|")
README_PAIR = re.compile(r"^\| `([A-Z_]+)` / `([A-Z_]+)` \| `([^`]+)` / `([^`]+)` \|")
SETTINGS_LINE = re.compile(r'^\s+"([A-Z_]+)": (.+?),\s*(?:#.*)?$')
# ``KEY`` (600 s), ``KEY`` (10,000), ``KEY`` (1,000 messages), ``KEY``, 120 s by default
PROSE = re.compile(r"``([A-Z][A-Z_]+)`` \((\d[\d,]*(?:\.\d+)?)(?: (?:s|seconds|messages|batches))?(?: by default)?[);]")


def stated_defaults() -> list[tuple[str, int, str, str]]:
    """(document, line, key, value as written) for each default the docs state."""
    found = []
    readme = ROOT / "README.md"
    for number, line in enumerate(readme.read_text().splitlines(), start=1):
        if match := README_ROW.match(line):
            found.append(("README.md", number, match[1], match[2]))
        elif match := README_PAIR.match(line):  # | `A` / `B` | `a` / `b` |
            found += [("README.md", number, match[1], match[3]), ("README.md", number, match[2], match[4])]
    settings = ROOT / "docs" / "settings.rst"
    text = settings.read_text().splitlines()
    start = next(n for n, line in enumerate(text) if line.strip() == "TURBO_ASYNC = {")
    for number, line in enumerate(text[start + 1 :], start=start + 2):
        if line.strip() == "}":
            break
        if match := SETTINGS_LINE.match(line):
            found.append(("docs/settings.rst", number, match[1], match[2]))
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), start=1):
            for key, value in PROSE.findall(line):
                if key in DEFAULTS:
                    found.append((document.relative_to(ROOT).as_posix(), number, key, value.replace(",", "")))
    return found


def test_the_docs_state_defaults() -> None:
    stated = stated_defaults()
    for document in ("README.md", "docs/settings.rst"):  # both say they list every key
        assert {key for where, _, key, _ in stated if where == document} == set(DEFAULTS), document
    assert len({key for _, _, key, _ in stated}) >= len(DEFAULTS)  # every key, at least once
    assert sum(document.endswith(".rst") and not document.endswith("settings.rst") for document, *_ in stated) > 5


@pytest.mark.parametrize(
    ("document", "line", "key", "value"), stated_defaults(), ids=[f"{d}:{n}:{k}" for d, n, k, _ in stated_defaults()]
)
def test_a_stated_default_is_the_default(document: str, line: int, key: str, value: str) -> None:
    assert key in DEFAULTS, f"{document}:{line} states a default for {key}, which TURBO_ASYNC does not have"
    assert ast.literal_eval(value) == DEFAULTS[key], (
        f"{document}:{line} says {key} defaults to {value}; turbo_async.conf says {DEFAULTS[key]!r}"
    )


# What docs/client.rst (and docs/guarantees.rst) state about the bundled client, as the constants
# of turbo-async.js that make it so: "after 0.5 s, then doubling up to 10 s (each delay varied by
# +-20 %)", "holds a batch ... for up to 2 s", "nothing arrived for 2.5 intervals".
CLIENT = ROOT / "turbo_async" / "static" / "turbo_async" / "js" / "turbo-async.js"
CLIENT_CONSTANTS = {
    "BACKOFF_INITIAL_MS": 500, "BACKOFF_FACTOR": 2, "BACKOFF_MAX_MS": 10000, "GAP_WAIT_MS": 2000, "STALE_INTERVALS": 2.5,
}
CLIENT_SENTENCES = {
    "docs/client.rst": ["after 0.5 s, then doubling up to 10 s", "varied by ±20 %", "for up to 2 s"],
    "docs/settings.rst": ["2.5 intervals"],
}


def test_the_client_constants_are_the_documented_ones() -> None:
    source = CLIENT.read_text()
    found = {name: ast.literal_eval(value) for name, value in re.findall(r"const ([A-Z_]+) = ([\d.]+);", source)}
    assert {name: found.get(name) for name in CLIENT_CONSTANTS} == CLIENT_CONSTANTS
    assert "base * (0.8 + Math.random() * 0.4)" in source  # the +-20 % jitter
    for document, sentences in CLIENT_SENTENCES.items():
        text = " ".join((ROOT / document).read_text().split())
        for sentence in sentences:
            assert sentence in text, f"{document} no longer says {sentence!r}: update CLIENT_CONSTANTS with it"


# The README's names for the distributions pyproject.toml declares.
README_NAMES = {
    "Django": "Django", "celery": "Celery", "kombu": "kombu", "redis": "redis-py", "channels": "Channels",
    "channels-redis": "channels_redis",
}


def test_the_readme_states_the_declared_minimum_versions() -> None:
    """The floors ``make test-lowest`` installs (``[project] dependencies``) are the ones the
    README's Install section states, and Python's too."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = dict(re.findall(r"^([A-Za-z][\w-]*)(?:\[[\w,]+\])?>=([\d.]+)", line)[0] for line in project["dependencies"])
    readme = " ".join((ROOT / "README.md").read_text().split())
    stated = {name: f"{README_NAMES[name]} ≥ {floor}" for name, floor in floors.items() if name in README_NAMES}
    assert set(stated) == set(README_NAMES), floors
    stated["python"] = f"Python ≥ {project['requires-python'].removeprefix('>=')}"
    missing = [text for text in stated.values() if text not in readme]
    assert not missing, f"README.md does not say {missing}; pyproject.toml declares them"


def test_flowers_batch_name_and_args_are_cut_where_monitoring_rst_says() -> None:
    """docs/monitoring.rst: a batch's name lists hooks up to 160 characters, its args up to 8,000."""
    from turbo_async import publish
    from turbo_async.changes import Change

    text = " ".join((ROOT / "docs" / "monitoring.rst").read_text().split())
    assert "more hooks than fit in 160 characters" in text and "Up to 8,000 characters are listed" in text
    name = publish.batch_name([f"app.Stream{n}.on_save" for n in range(100)])
    assert len(name) <= 160 and name.endswith("more")
    args = publish.describe_batch([(Change("chat.message", f"{n:036d}", "save"), "default") for n in range(1000)])
    assert 7_500 < len(args) <= 8_000 and args.endswith("more")


# Constants of the package that the docs state, with the words that state them.
DOCUMENTED_CONSTANTS = [
    ("turbo_async.protocol", "MERGE_FRAMES", 64, "docs/client.rst", "``MERGE_FRAMES`` (64)"),
    ("turbo_async.protocol", "MERGE_BYTES", 256 * 1024, "docs/client.rst", "``MERGE_BYTES`` (256 KB)"),
    ("turbo_async.layers", "FORGET_AGAIN_AFTER", 5.0, "docs/architecture.rst", "dropped at the close and again 5 s later"),
    ("turbo_async.history", "EPOCH_TTL", 7 * 24 * 3600, "docs/settings.rst", "kept 7 days after the stream's last publication"),
]


@pytest.mark.parametrize(("module", "name", "value", "document", "words"), DOCUMENTED_CONSTANTS,
                         ids=[c[1] for c in DOCUMENTED_CONSTANTS])
def test_a_documented_constant_is_what_the_docs_say(module: str, name: str, value: object, document: str, words: str) -> None:
    import importlib

    assert getattr(importlib.import_module(module), name) == value
    assert words in " ".join((ROOT / document).read_text().split()), f"{document} no longer says {words!r}"
