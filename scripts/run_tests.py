#!/usr/bin/env python
"""``make test``: the whole suite on SQLite with the pub/sub channel layer, then the tests marked
``database`` or ``layer`` on PostgreSQL with the core channel layer, and one summary of both at the end.

Usage (from the repository root):

    python scripts/run_tests.py [--only-marked EXPRESSION] [PYTEST ARGS...]

Each phase is a pytest run of its own (tests/settings.py picks the database from
``TURBO_TEST_DATABASE`` and the channels_redis layer of the worker and web processes from
``TURBO_TEST_LAYER`` when it is imported): so every fault test runs under both layers, and the
suite still runs once. Its counts come from the JUnit XML report that
pytest writes (``--junitxml``), not from its terminal output. Arguments are passed to both runs,
e.g. ``python scripts/run_tests.py tests/test_demo_views.py -x``. ``--only-marked EXPRESSION``
(first) narrows every phase to the tests that also match that marker expression: ``make
test-lowest`` passes ``"not browser"`` (a ``-m`` among the pytest arguments would replace the
second phase's own instead).

The last line printed is the combined summary, alone and in a fixed form for CI to read:
``N passed, N failed`` and, when some were skipped, ``, N skipped`` (errors count as failed).
The exit status is 0 only when every phase passed. The PostgreSQL phase runs even when the
SQLite phase failed (a failure on one database says nothing about the other), but not after
Ctrl-C or when pytest itself could not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent

# pytest's exit codes (pytest.ExitCode) that this script tells apart.
TESTS_FAILED = 1
NO_TESTS_COLLECTED = 5


@dataclass(frozen=True)
class Phase:
    title: str
    database: str
    layer: str
    markers: str | None  # a pytest marker expression, None for every test


PHASES = (
    Phase("SQLite, pubsub layer: all tests", "sqlite", "pubsub", None),
    Phase("PostgreSQL, core layer: database and layer tests", "postgres", "core", "database or layer"),
)


def marker_args(phase: Phase, only_marked: str | None) -> tuple[str, ...]:
    """The ``-m`` of ``phase``, narrowed to ``only_marked`` too; nothing when neither selects."""
    expressions = [f"({expression})" for expression in (phase.markers, only_marked) if expression]
    return ("-m", " and ".join(expressions)) if expressions else ()


@dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.passed + other.passed, self.failed + other.failed, self.skipped + other.skipped
        )

    def summary(self) -> str:
        """``N passed, N failed`` and ``, N skipped`` when there are any: CI parses this."""
        text = f"{self.passed} passed, {self.failed} failed"
        return f"{text}, {self.skipped} skipped" if self.skipped else text


@dataclass(frozen=True)
class Result:
    phase: Phase
    exit_code: int
    counts: Counts
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code in (0, NO_TESTS_COLLECTED) and self.counts.failed == 0


def read_report(path: Path) -> Counts:
    """Counts from a pytest JUnit XML report (one <testsuite>, or several under <testsuites>)."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = Counts()
    for suite in suites:
        tests, failures, errors, skipped = (
            int(suite.get(name, "0")) for name in ("tests", "failures", "errors", "skipped")
        )
        total += Counts(tests - failures - errors - skipped, failures + errors, skipped)
    return total


class Interrupted:
    """Ctrl-C reaches pytest too (same terminal): pytest stops and reports; this script only
    notes it and then runs no further phase. A handler, not SIG_IGN, so that pytest (after exec)
    gets the default behaviour back."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True


def run_phase(phase: Phase, pytest_args: list[str], report_dir: Path, only_marked: str | None = None) -> Result:
    report = report_dir / f"{phase.database}.xml"
    command = [
        sys.executable, "-m", "pytest", *marker_args(phase, only_marked), f"--junitxml={report}", *pytest_args,
    ]
    env = {**os.environ, "TURBO_TEST_DATABASE": phase.database, "TURBO_TEST_LAYER": phase.layer}
    exit_code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    if not report.exists():
        # pytest stopped before writing a report (usage error, crash): counted as one failure so
        # that the summary line cannot read "0 failed" for a run that did not happen.
        return Result(
            phase, exit_code, Counts(failed=1), f"pytest exited {exit_code} without a report, counted as 1 failed"
        )
    counts = read_report(report)
    if exit_code == NO_TESTS_COLLECTED:
        return Result(phase, exit_code, counts, "no tests selected")
    if exit_code != 0 and counts.failed == 0:
        # E.g. interrupted, or an internal error after the report: the run did not pass.
        return Result(phase, exit_code, counts + Counts(failed=1), f"pytest exited {exit_code}, counted as 1 failed")
    return Result(phase, exit_code, counts)


def banner(text: str) -> None:
    print(f"\n{'=' * 20} {text} {'=' * 20}", flush=True)


def main(pytest_args: list[str]) -> int:
    only_marked = None
    if pytest_args[:1] == ["--only-marked"]:
        only_marked, pytest_args = pytest_args[1], pytest_args[2:]
    interrupted = Interrupted()
    signal.signal(signal.SIGINT, interrupted)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="turbo_async_reports_") as report_dir:
        for phase in PHASES:
            banner(phase.title)
            result = run_phase(phase, pytest_args, Path(report_dir), only_marked)
            results.append(result)
            # After Ctrl-C, or when pytest itself could not run (usage or internal error), the
            # next phase would not fare better; after failed tests it still says something new.
            if interrupted.seen or result.exit_code not in (0, TESTS_FAILED, NO_TESTS_COLLECTED):
                break

    banner("Summary")
    width = max(len(phase.title) for phase in PHASES)
    for phase in PHASES:
        done = next((r for r in results if r.phase is phase), None)
        if done is None:
            print(f"{phase.title:<{width}}  not run", flush=True)
            continue
        status = "ok" if done.ok else "FAILED"
        note = f" ({done.note})" if done.note else ""
        print(f"{phase.title:<{width}}  {done.counts.summary()}  {status}{note}", flush=True)
    total = sum((r.counts for r in results), Counts())
    print(total.summary(), flush=True)
    complete = len(results) == len(PHASES)
    return 0 if complete and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
