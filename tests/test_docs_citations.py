"""Every test the README and the docs cite exists: a ``tests/...py::name`` citation names a test
function (or class) defined in that file, and a ``tests/...py`` path names a file of the
repository. A renamed or deleted test then fails here instead of leaving a guarantee that cites
nothing (issue 25.7). Whether the bound beside the citation is the one the test asserts is read
by people; see the audit table in the report of that issue."""

from __future__ import annotations

import ast
import re
from functools import cache

import pytest

from tests.services import ROOT

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


def bare_names() -> list[tuple[str, int, str]]:
    found = []
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), start=1):
            found += [(document.relative_to(ROOT).as_posix(), number, name) for name in BARE_NAME.findall(line)]
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


@pytest.mark.parametrize(("document", "line", "name"), bare_names(), ids=[label(c) for c in bare_names()])
def test_a_test_named_without_its_file_exists_somewhere_in_tests(document: str, line: int, name: str) -> None:
    files = [path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")]
    assert any(name in defined(path) for path in files), f"{document}:{line} cites {name}, which no test file defines"
