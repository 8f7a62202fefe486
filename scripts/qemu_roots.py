# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Debian trixie and sid roots with their QEMU and libvirt, to check the launcher against real versions.

The machine's own QEMU (bookworm 7.2) has no ``sev-snp-guest``; trixie has QEMU 10 and
libvirt 11, sid QEMU 11 and libvirt 12.  Each is an mmdebstrap root (apt variant plus
qemu-system-x86, libvirt-clients, libvirt-common, libxml2-utils) in
``~/.cache/snpguard/qemu-roots/<suite>``, rebuilt when this recipe changes; commands run
in it with chroot (as root), with /proc mounted and a work directory bind-mounted at the
same path inside, so file names in argv need no translation.  The machine's packages are
never touched.

    scripts/qemu_roots.py build trixie sid
    scripts/qemu_roots.py run trixie --bind /tmp/work -- qemu-system-x86_64 --version
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SUITES = ("trixie", "sid")
PACKAGES = ("qemu-system-x86", "libvirt-clients", "libvirt-common", "libxml2-utils")
RECIPE_VERSION = 1


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("SNPGUARD_QEMU_ROOTS", Path(base) / "snpguard" / "qemu-roots"))


def mirror() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fetch_artifacts import configured_mirror

    return configured_mirror()


def recipe(suite: str) -> str:
    return hashlib.sha256(json.dumps({"v": RECIPE_VERSION, "suite": suite, "packages": PACKAGES}).encode()).hexdigest()


def build(suite: str) -> Path:
    """The root for ``suite``, built once (and again when the recipe changes)."""
    if suite not in SUITES:
        raise SystemExit(f"qemu_roots: unknown suite {suite!r} (known: {', '.join(SUITES)})")
    root = cache_root() / suite
    stamp = cache_root() / f"{suite}.json"
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe(suite) and (root / "usr").is_dir():
            return root
        _unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)
        tmp = root.with_name(f".{suite}.new")
        _unmount_all(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        argv = ["mmdebstrap", "--variant=apt", f"--include={','.join(PACKAGES)}", "--quiet",
                # sid's Release file may be past its validity window on a snapshot mirror.
                "--aptopt=Acquire::Check-Valid-Until \"false\"", suite, str(tmp), mirror()]
        print(f"qemu_roots: building {suite} ({' '.join(argv)})", flush=True)
        subprocess.run(argv, check=True)
        versions = subprocess.run(["chroot", str(tmp), "dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                                   *PACKAGES], capture_output=True, text=True, check=True).stdout
        tmp.rename(root)
        stamp.write_text(json.dumps({"recipe": recipe(suite), "versions": versions.splitlines(),
                                     "build_seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
        print(f"qemu_roots: {suite} ready in {time.monotonic() - started:.0f} s: {versions.strip()}", flush=True)
    return root


def _mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def _unmount_all(root: Path) -> None:
    if not root.exists():
        return
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        target = line.split()[1]
        if target == str(root) or target.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", target], check=False)


@contextlib.contextmanager
def mounted(root: Path, binds: list[str]) -> Iterator[None]:
    """/proc and the given directories (at the same paths) inside ``root``, for the block."""
    done: list[Path] = []
    try:
        proc = root / "proc"
        if not _mounted(proc):
            subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
            done.append(proc)
        for directory in binds:
            inside = root / directory.lstrip("/")
            inside.mkdir(parents=True, exist_ok=True)
            if not _mounted(inside):
                subprocess.run(["mount", "--bind", directory, str(inside)], check=True)
                done.append(inside)
        yield
    finally:
        for path in reversed(done):
            subprocess.run(["umount", "-l", str(path)], check=False)


def run(suite: str, argv: list[str], binds: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    root = build(suite)
    with mounted(root, binds):
        return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=timeout,
                              check=False)


def versions(suite: str) -> list[str]:
    build(suite)
    return list(json.loads((cache_root() / f"{suite}.json").read_text())["versions"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    actions = parser.add_subparsers(dest="action", required=True)
    b = actions.add_parser("build", help="build (or find) the roots")
    b.add_argument("suites", nargs="*", default=list(SUITES))
    r = actions.add_parser("run", help="run a command in a root")
    r.add_argument("suite")
    r.add_argument("--bind", action="append", default=[], help="a directory to see at the same path inside")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.action == "build":
        for suite in args.suites:
            print(f"{suite}: {build(suite)}")
        return 0
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    result = run(args.suite, argv, args.bind)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
