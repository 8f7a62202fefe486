# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Controller side of the server role: pack what it installs as deterministic archives.

    python make_source_archive.py SOURCE_DIR DEST.tar.gz
    python make_source_archive.py --wheelhouse WHEEL_DIR DEST.tar.gz

The first packs the collection as an installable source archive: only what ``pip
install`` needs (pyproject.toml and the package directories).  The second packs the
wheels of a wheelhouse (top-level ``*.whl`` files) so that one copy, not one per
file, reaches the host.  Fixed times, owners and modes: the same input gives the
same bytes and the role's copy reports no change.  Prints JSON: path, sha256,
version (source only), files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile

# What pyproject.toml's wheel target includes (from a checkout or an installed collection).
INCLUDE = ("pyproject.toml", "galaxy.yml", "README.md", "LICENSE", "requirements.txt", "requirements-server.txt",
           "constraints-server.txt", "meta", "plugins", "roles", "playbooks", "cli", "server", "docs")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def files_of(source):
    for name in INCLUDE:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            yield name
        elif os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                for item in sorted(names):
                    if item.endswith((".pyc", ".pyo")):
                        continue
                    full = os.path.join(root, item)
                    if os.path.isfile(full) and not os.path.islink(full):
                        yield os.path.relpath(full, source)


def wheels_of(wheel_dir):
    names = sorted(name for name in os.listdir(wheel_dir)
                   if name.endswith(".whl") and os.path.isfile(os.path.join(wheel_dir, name)))
    if not names:
        raise SystemExit(f"snpguard_server_wheelhouse ({wheel_dir}) holds no .whl files")
    return names


def pack(source, rels, top, dest):
    """Write the files ``rels`` (relative to ``source``) under ``top/`` to ``dest``; returns (sha256, count)."""
    raw = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(rels):
            full = os.path.join(source, rel)
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = os.path.getsize(full)
            info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(full, "rb") as handle:
                tar.addfile(info, handle)
            count += 1
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    tmp = dest + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, dest)
    return hashlib.sha256(data).hexdigest(), count


def main(argv):
    if len(argv) == 4 and argv[1] == "--wheelhouse":
        wheel_dir, dest = argv[2], argv[3]
        digest, count = pack(wheel_dir, wheels_of(wheel_dir), "wheelhouse", dest)
        print(json.dumps({"path": dest, "sha256": digest, "files": count}))
        return 0
    source, dest = argv[1], argv[2]
    with open(os.path.join(source, "pyproject.toml"), encoding="utf-8") as handle:
        match = re.search(r'^version\s*=\s*"([^"]+)"', handle.read(), re.M)
    version = match.group(1) if match else "0"
    digest, count = pack(source, files_of(source), f"snpguard_cvm-{version}", dest)
    print(json.dumps({"path": dest, "sha256": digest, "version": version, "files": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
