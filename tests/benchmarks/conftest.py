"""The benchmarks are run by ``make bench`` (tests/benchmarks/run.py), never by pytest."""

from __future__ import annotations

collect_ignore_glob = ["*"]
