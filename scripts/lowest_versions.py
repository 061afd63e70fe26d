#!/usr/bin/env python
"""Print pip constraints that pin every runtime dependency of turbo_async to its declared minimum.

``pyproject.toml``'s ``[project] dependencies`` stay the single source of the floors: each entry's
``>=`` bound becomes ``name==bound`` (extras dropped: pip refuses them in a constraints file, and
the extra's own packages are pinned by their own entries). ``make test-lowest`` installs the
package and its test extra under these constraints, so the suite runs on the oldest versions a
user may have. A dependency without a ``>=`` bound is an error: its lowest version is unknown.

    python scripts/lowest_versions.py > constraints.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def floor(requirement: Requirement) -> str:
    bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    if len(bounds) != 1:
        raise ValueError(f"{requirement}: a runtime dependency needs exactly one '>=' bound (found {len(bounds)})")
    return bounds[0]


def constraints(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==floor`` (with the entry's environment marker, if any) for each runtime dependency."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = []
    for entry in project["dependencies"]:
        requirement = Requirement(entry)
        marker = f"; {requirement.marker}" if requirement.marker else ""
        lines.append(f"{requirement.name}=={floor(requirement)}{marker}")
    return lines


def main() -> int:
    try:
        lines = constraints()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
