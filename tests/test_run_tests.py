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


def collected(*args: str) -> set[str]:
    """The node ids pytest collects for ``args`` (a real collection in a pytest process of its own)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {line for line in run.stdout.splitlines() if "::" in line}


# What docs/testing.rst says the PostgreSQL phase runs: every transaction test (commits, rollbacks,
# savepoints), the database outbox and its sweep, a second alias, cascades.
ON_BOTH_DATABASES = [
    "tests/test_pending.py",
    "tests/test_outbox.py::test_the_database_outbox_writes_a_row_in_the_saving_transaction",
    "tests/test_outbox.py::test_a_rolled_back_save_leaves_no_outbox_row",
    "tests/test_outbox.py::test_the_sweep_publishes_rows_left_behind_in_commit_order",
    "tests/test_outbox.py::test_stream_later_goes_through_the_outbox_on_the_alias_of_its_transaction",
    "tests/test_signals.py::test_a_change_is_recorded_on_the_database_it_was_made_on",
    "tests/test_worker.py::test_cascade_deleted_parent_in_on_delete_is_logged_at_info",
]


def test_the_postgres_phase_runs_the_transaction_outbox_alias_and_cascade_tests() -> None:
    everything = collected(*ON_BOTH_DATABASES)
    assert len(everything) >= len(ON_BOTH_DATABASES) + 10  # test_pending.py alone has a dozen
    assert collected(*marker_args(POSTGRES, None), *ON_BOTH_DATABASES) == everything
