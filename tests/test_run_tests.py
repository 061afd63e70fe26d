"""scripts/run_tests.py: which tests each phase of ``make test`` (and ``make test-lowest``) selects."""

from __future__ import annotations

import runpy
from typing import Any

from tests.services import ROOT

RUN_TESTS: dict[str, Any] = runpy.run_path(str(ROOT / "scripts" / "run_tests.py"))
SQLITE, POSTGRES = RUN_TESTS["PHASES"]
marker_args = RUN_TESTS["marker_args"]


def test_the_sqlite_phase_selects_every_test() -> None:
    assert marker_args(SQLITE, None) == ()


def test_the_postgres_phase_selects_the_database_and_layer_tests() -> None:
    assert marker_args(POSTGRES, None) == ("-m", "(database or layer)")


def test_only_marked_narrows_every_phase() -> None:
    assert marker_args(SQLITE, "not browser") == ("-m", "(not browser)")
    assert marker_args(POSTGRES, "not browser") == ("-m", "(database or layer) and (not browser)")
