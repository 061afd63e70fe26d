#!/usr/bin/env python
"""
Vendor the pinned Hotwire Turbo browser bundle into turbo_async's static files.

Usage (from the repository root):

    python scripts/download_turbo.py

The package is fetched with ``npm pack`` so that whatever registry npm is
configured with is used; no registry URL is hard-coded here. To upgrade Turbo,
bump ``TURBO_VERSION`` and re-run the script.

Outputs, in ``turbo_async/static/turbo_async/js/``:

* ``turbo.es2017-umd.js``  - byte-identical copy of ``package/dist/turbo.es2017-umd.js``
* ``turbo.LICENSE.txt``    - MIT license text (the npm tarball ships no LICENSE file)
* ``VENDORED.txt``         - package name, version and sha256 of the vendored file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE_NAME = "@hotwired/turbo"
TURBO_VERSION = "8.0.23"

# Path of the bundle inside the npm tarball (npm always prefixes "package/").
TARBALL_MEMBER = "package/dist/turbo.es2017-umd.js"
TARBALL_PACKAGE_JSON = "package/package.json"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEST_DIR = REPO_ROOT / "turbo_async" / "static" / "turbo_async" / "js"
JS_NAME = "turbo.es2017-umd.js"
LICENSE_NAME = "turbo.LICENSE.txt"
VENDORED_NAME = "VENDORED.txt"

MIT_LICENSE_TEMPLATE = """\
Turbo {version} ({package})
This file covers {js_name}, vendored unmodified from the npm package.
The package declares "license": "{license}" in its package.json; it ships no
LICENSE file, so the standard MIT text is reproduced below.

MIT License

Copyright (c) {holder}

Permission is hereby granted, free of charge, to any person obtaining
a copy of this software and associated documentation files (the
"Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to
the following conditions:

The above copyright notice and this permission notice shall be
included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--dest",
        type=Path,
        default=DEST_DIR,
        help="Output directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    dest: Path = args.dest

    npm = shutil.which("npm")
    if npm is None:
        print("error: npm is required but was not found on PATH", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="turbo-pack-") as tmp:
        tarball, integrity = npm_pack(npm, f"{PACKAGE_NAME}@{TURBO_VERSION}", Path(tmp))
        js_bytes, package_json = read_tarball(tarball)

    # Refuse to vendor something other than what we pinned.
    if package_json.get("name") != PACKAGE_NAME or package_json.get("version") != TURBO_VERSION:
        print(
            f"error: tarball is {package_json.get('name')}@{package_json.get('version')}, "
            f"expected {PACKAGE_NAME}@{TURBO_VERSION}",
            file=sys.stderr,
        )
        return 1
    license_id = package_json.get("license")
    if license_id != "MIT":
        # The license text below is MIT; anything else needs a human to look.
        print(f"error: unexpected license {license_id!r}, expected 'MIT'", file=sys.stderr)
        return 1

    dest.mkdir(parents=True, exist_ok=True)

    # Written as raw bytes: the vendored file must stay byte-identical to upstream.
    (dest / JS_NAME).write_bytes(js_bytes)
    sha256 = hashlib.sha256(js_bytes).hexdigest()

    (dest / LICENSE_NAME).write_text(
        MIT_LICENSE_TEMPLATE.format(
            version=TURBO_VERSION,
            package=PACKAGE_NAME,
            js_name=JS_NAME,
            license=license_id,
            holder=author_name(package_json),
        ),
        encoding="utf-8",
    )

    vendored_lines = [
        f"package: {PACKAGE_NAME}",
        f"version: {TURBO_VERSION}",
        f"file: {JS_NAME}",
        f"source: npm pack {PACKAGE_NAME}@{TURBO_VERSION} -> {TARBALL_MEMBER}",
        f"sha256: {sha256}",
    ]
    if integrity:
        vendored_lines.append(f"tarball-integrity: {integrity}")
    vendored_lines.append("regenerate: python scripts/download_turbo.py")
    (dest / VENDORED_NAME).write_text("\n".join(vendored_lines) + "\n", encoding="utf-8")

    print(f"{PACKAGE_NAME}@{TURBO_VERSION} -> {dest / JS_NAME}")
    print(f"sha256 {sha256}")
    return 0


def npm_pack(npm: str, spec: str, workdir: Path) -> tuple[Path, str | None]:
    """Run ``npm pack`` for *spec* into *workdir*; return (tarball path, integrity)."""
    proc = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"npm pack {spec} failed with exit code {proc.returncode}")
    info = json.loads(proc.stdout)[0]
    tarball = workdir / info["filename"]
    if not tarball.is_file():
        raise SystemExit(f"npm pack did not produce {tarball}")
    integrity = info.get("integrity")
    return tarball, integrity if isinstance(integrity, str) else None


def read_tarball(tarball: Path) -> tuple[bytes, dict[str, object]]:
    """Read the bundle and package.json from the tarball without extracting to disk."""
    with tarfile.open(tarball, "r:gz") as tar:
        js_bytes = read_member(tar, TARBALL_MEMBER)
        package_json = json.loads(read_member(tar, TARBALL_PACKAGE_JSON).decode("utf-8"))
    if not isinstance(package_json, dict):
        raise SystemExit("package.json is not a JSON object")
    return js_bytes, package_json


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise SystemExit(f"{name} not found in tarball") from None
    fileobj = tar.extractfile(member) if member.isfile() else None
    if fileobj is None:
        raise SystemExit(f"{name} is not a regular file in tarball")
    with fileobj:
        return fileobj.read()


def author_name(package_json: dict[str, object]) -> str:
    """Copyright holder from package.json "author" (a string or {"name": ...})."""
    author = package_json.get("author")
    if isinstance(author, dict):
        author = author.get("name")
    if isinstance(author, str) and author.strip():
        # Strip any " <email>" / " (url)" suffix of the npm person-string form.
        return author.split("<")[0].split("(")[0].strip()
    return "37signals LLC"


if __name__ == "__main__":
    raise SystemExit(main())
