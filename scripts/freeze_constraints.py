# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Pin the key-release server's dependency closure as installed in a venv: constraints-server.txt.

    .venv/bin/python scripts/freeze_constraints.py            print the constraints
    .venv/bin/python scripts/freeze_constraints.py --write    rewrite constraints-server.txt

Starts from requirements-server.txt (its requirements, their extras, and the files it
includes with ``-r``), follows ``Requires-Dist`` of what ``pip inspect`` reports as installed
in this Python's environment (markers evaluated here, extras followed), and prints
``name==version`` for every distribution reached. A requirement that is not installed is an
error: install requirements-server.txt first (scripts/test prepare does).

The server role installs with ``--constraint constraints-server.txt``, so a deployment gets
exactly the versions the tests ran with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "requirements-server.txt"
TARGET = ROOT / "constraints-server.txt"

HEADER = """\
# Exact versions of the key-release server's dependency closure (requirements-server.txt,
# including psycopg for PostgreSQL), as installed in the venv the tests ran in. The server role
# installs with --constraint constraints-server.txt; pip install 'snpguard-cvm[server]' -c
# constraints-server.txt does the same by hand. Generated; regenerate after changing the
# requirements (and installing them) with:
#   .venv/bin/python scripts/freeze_constraints.py --write
"""


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of a pip requirements file, following ``-r`` includes."""
    found: list[Requirement] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            found += read_requirements(path.parent / line.split(None, 1)[1])
        elif line.startswith("-"):
            raise SystemExit(f"{path}: unsupported option line {raw!r}")
        else:
            found.append(Requirement(line))
    return found


def installed() -> dict[str, dict]:
    report = subprocess.run([sys.executable, "-m", "pip", "inspect", "--local"], capture_output=True, text=True,
                            check=True)
    return {canonicalize_name(d["metadata"]["name"]): d["metadata"] for d in json.loads(report.stdout)["installed"]}


def closure(roots: list[Requirement], dists: dict[str, dict]) -> dict[str, str]:
    """{name: version} of every installed distribution the requirements reach."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(req, "") for req in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name not in dists:
            raise SystemExit(f"{req} is required but not installed in {sys.prefix}")
        meta = dists[name]
        if not req.specifier.contains(meta["version"], prereleases=True):
            raise SystemExit(f"{req} is required but {meta['name']} {meta['version']} is installed")
        pinned[name] = meta["version"]
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(dep), wanted) for dep in meta.get("requires_dist", [])]
    return pinned


def render(pinned: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pinned.items()))


def main(argv: list[str]) -> int:
    text = render(closure(read_requirements(SOURCE), installed()))
    if argv[1:] == ["--write"]:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)} ({text.count('==')} pins)")
    elif argv[1:]:
        raise SystemExit(__doc__)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
