# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Pin a dependency closure as installed in a venv: constraints-server.txt and constraints.txt.

    .venv/bin/python scripts/freeze_constraints.py [server|venv]            print the constraints
    .venv/bin/python scripts/freeze_constraints.py [server|venv] --write    rewrite the file

``server`` (the default) starts from requirements-server.txt and writes constraints-server.txt:
the server role installs with ``--constraint constraints-server.txt``, so a deployment gets
exactly the versions the tests ran with. ``venv`` starts from requirements-test.txt (which
includes requirements.txt and requirements-server.txt) and writes constraints.txt: scripts/setup
and scripts/test install the project's venv with it, so a new upstream release cannot change
what the main job and CI run unannounced.

Follows the requirements (their extras, and the files included with ``-r``), then
``Requires-Dist`` of what ``pip inspect`` reports as installed in this Python's environment
(markers evaluated here, extras followed), and prints ``name==version`` for every distribution
reached. A requirement that is not installed is an error: install the requirements first
(scripts/test prepare does).
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
SETS = {  # name: (requirements, constraints written, the lines of its header that say what it pins)
    "server": ("requirements-server.txt", "constraints-server.txt", (
        "Exact versions of the key-release server's dependency closure (requirements-server.txt,",
        "including psycopg for PostgreSQL), as installed in the venv the tests ran in. The server role",
        "installs with --constraint constraints-server.txt; pip install 'snpguard-cvm[server]' -c",
        "constraints-server.txt does the same by hand.")),
    "venv": ("requirements-test.txt", "constraints.txt", (
        "Exact versions of the project venv's dependency closure (requirements-test.txt, which includes",
        "requirements.txt and requirements-server.txt), as installed in the venv the tests ran in.",
        "scripts/setup and scripts/test install with --constraint constraints.txt.")),
}


def header(name: str) -> str:
    command = "scripts/freeze_constraints.py" + ("" if name == "server" else f" {name}")
    lines = [*SETS[name][2], "Generated; regenerate after changing the requirements (and installing them) with:",
             f"  .venv/bin/python {command} --write"]
    return "".join(f"# {line}\n" for line in lines)


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


def render(name: str, pinned: dict[str, str]) -> str:
    return header(name) + "".join(f"{dist}=={version}\n" for dist, version in sorted(pinned.items()))


def main(argv: list[str]) -> int:
    args = argv[1:]
    name = args.pop(0) if args and args[0] in SETS else "server"
    source, target = ROOT / SETS[name][0], ROOT / SETS[name][1]
    text = render(name, closure(read_requirements(source), installed()))
    if args == ["--write"]:
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target.relative_to(ROOT)} ({text.count('==')} pins)")
    elif args:
        raise SystemExit(__doc__)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
