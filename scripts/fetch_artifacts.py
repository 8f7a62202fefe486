# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fetch the real Debian artifacts the tests and the sample playbook measure.

Everything comes from the Debian archive mirror configured in /etc/apt (or
$SNPGUARD_DEBIAN_MIRROR), through apt itself, so every .deb is checked against
an index signed by the Debian archive keys.  apt runs with a configuration of
its own under the cache directory (its own sources list, package lists, cache
and an empty dpkg status): the machine's sources, pins and installed packages
are neither read nor changed, and nothing gets installed or upgraded.

Output, in ${SNPGUARD_ARTIFACTS:-${XDG_CACHE_HOME:-$HOME/.cache}/snpguard/artifacts}:

  OVMF.amdsev.fd  sid ovmf-amdsev: the AmdSev build (SNP metadata + kernel-hashes table)
  OVMF.fd         sid ovmf (or ovmf-generic, where sid now ships the plain OvmfX64 build)
  vmlinuz         bookworm debian-installer-12-netboot-amd64: the installer's kernel
  initrd.img      the same package's matching initrd.gz (text installer)
  vmlinuz-trixie  trixie linux-image-amd64's kernel (the launcher's tests boot it with small initrds)
  busybox         trixie busybox-static (the userland of those initrds)
  manifest.json   sha256, size, package, version, suite and source of each file

Idempotent: a file whose size and sha256 match the manifest is kept; only the
missing or damaged ones are fetched again (--refresh re-fetches everything,
picking up the current versions in the archive).

Standard library only; needs apt-get, dpkg-deb and gpgv (apt's own dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MANIFEST = "manifest.json"
SCHEMA = 1

# Output file -> (suite, [(package, path inside the package), ...]).  Candidates are
# tried in order; the first package that contains the path wins.  In sid, `ovmf`
# became a metapackage and OVMF.fd moved to `ovmf-generic` (same edk2 source as
# ovmf-amdsev); the fallback keeps both layouts working.
_DI = "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64"
ARTIFACTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "OVMF.amdsev.fd": ("sid", [("ovmf-amdsev", "usr/share/ovmf/OVMF.amdsev.fd")]),
    "OVMF.fd": ("sid", [("ovmf", "usr/share/ovmf/OVMF.fd"), ("ovmf-generic", "usr/share/ovmf/OVMF.fd")]),
    "vmlinuz": ("bookworm", [("debian-installer-12-netboot-amd64", f"{_DI}/linux")]),
    "initrd.img": ("bookworm", [("debian-installer-12-netboot-amd64", f"{_DI}/initrd.gz")]),
    # Debian 13's kernel (virtio console, PCI and devtmpfs built in) and a static busybox: the small
    # initrds of the launcher's tests.  "@pkg" is a metapackage: its first dependency is downloaded.
    "vmlinuz-trixie": ("trixie", [("@linux-image-amd64", "boot/vmlinuz-*")]),
    "busybox": ("trixie", [("busybox-static", "usr/bin/busybox")]),
}


def say(msg: str) -> None:
    print(f"fetch-artifacts: {msg}", flush=True)


def die(msg: str) -> None:
    print(f"fetch-artifacts: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def default_dir() -> Path:
    if os.environ.get("SNPGUARD_ARTIFACTS"):
        return Path(os.environ["SNPGUARD_ARTIFACTS"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "snpguard" / "artifacts"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- mirror


def _deb822_stanzas(text: str):
    stanza: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def configured_mirror() -> str:
    """The Debian archive URI configured in /etc/apt (the one serving `main`)."""
    if os.environ.get("SNPGUARD_DEBIAN_MIRROR"):
        return os.environ["SNPGUARD_DEBIAN_MIRROR"].rstrip("/")
    candidates: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in _deb822_stanzas(Path(path).read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                continue
            candidates += stanza.get("uris", "").split()
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text(errors="replace").splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    candidates.append(words[1])
    for uri in candidates:
        # The main archive, not debian-security, debian-ports, or a third-party repository.
        if re.search(r"/debian/?$", uri) and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


# --------------------------------------------------------------------------- apt


class Apt:
    """apt-get with a private state: own sources, lists, cache and empty dpkg status."""

    def __init__(self, root: Path, mirror: str, suites: list[str]) -> None:
        self.root = root
        self.mirror = mirror
        self.suites = suites
        for sub in ("etc/preferences.d", "lists/partial", "cache/archives/partial", "debs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        keyring = os.environ.get("SNPGUARD_APT_KEYRING", KEYRING)
        if not Path(keyring).is_file():
            die(f"{keyring} is missing: apt-get install debian-archive-keyring")
        sources = "".join(f"deb [signed-by={keyring}] {mirror} {suite} main\n" for suite in suites)
        (root / "etc/sources.list").write_text(sources)
        user = pwd.getpwuid(os.getuid()).pw_name
        self.options = [
            f"-oDir::Etc::SourceList={root}/etc/sources.list",
            "-oDir::Etc::SourceParts=-",
            f"-oDir::Etc::Preferences={root}/etc/preferences",
            f"-oDir::Etc::PreferencesParts={root}/etc/preferences.d",
            f"-oDir::State::Lists={root}/lists",
            f"-oDir::State::Status={root}/status",
            f"-oDir::Cache={root}/cache",
            "-oAPT::Architecture=amd64",
            "-oAPT::Architectures::=amd64",
            "-oAcquire::Languages=none",
            "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
            # Files live in the caller's cache (e.g. /root/.cache), which apt's
            # unprivileged _apt user cannot enter: download as the caller.
            f"-oAPT::Sandbox::User={user}",
        ]

    def run(self, *args: str, cwd: Path | None = None) -> None:
        argv = ["apt-get", "-q", *self.options, *args]
        log = self.root / "apt.log"
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            result = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            hint = ""
            if any("no longer valid" in line or "not valid yet" in line for line in tail):
                hint = (
                    "\nThe mirror's Release files are out of their validity window (a frozen snapshot?)."
                    " apt.conf's Acquire::Check-Valid-Until applies here as for the machine's own apt."
                )
            elif any("NO_PUBKEY" in line or "EXPKEYSIG" in line for line in tail):
                hint = "\nThe keyring does not verify this suite: install a newer debian-archive-keyring, or set"
                hint += " SNPGUARD_APT_KEYRING to a keyring that does."
            die(
                f"apt-get {args[0]} failed (exit {result.returncode}); last lines of {log}:\n  "
                + "\n  ".join(tail)
                + hint
            )
        # apt-get update exits 0 on some fetch/signature problems: treat them as fatal.
        if args[0] == "update":
            text = log.read_text(errors="replace").split(f"$ {' '.join(argv)}")[-1]
            bad = [line for line in text.splitlines() if re.match(r"^\s*(W|E|Err):", line)]
            if bad:
                die("apt-get update reported problems (check the keyring for these suites):\n  " + "\n  ".join(bad))

    def update(self) -> None:
        say(f"apt-get update ({', '.join(self.suites)} from {self.mirror}; private state in {self.root})")
        self.run("update")

    def first_dependency(self, package: str, suite: str) -> str:
        """The first package a metapackage depends on (e.g. linux-image-amd64 -> linux-image-6.12.…-amd64)."""
        argv = ["apt-cache", *self.options, "show", f"{package}/{suite}"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            if line.startswith("Depends:"):
                return line.split(":", 1)[1].split(",")[0].split("(")[0].split("|")[0].strip()
        die(f"apt-cache show {package}/{suite} names no dependency (exit {result.returncode}): {result.stderr}")
        raise AssertionError  # (die exits)

    def download(self, package: str, suite: str) -> Path:
        debs = self.root / "debs"
        for old in debs.glob(f"{package}_*.deb"):
            old.unlink()
        self.run("download", f"{package}/{suite}", cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if len(found) != 1:
            die(f"apt-get download {package}/{suite} left {len(found)} files in {debs}")
        return found[0]


# --------------------------------------------------------------------------- debs


def deb_fields(deb: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Source"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = {}
    for line in out.splitlines():
        key, _sep, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    source = fields.get("source") or fields["package"]
    match = re.fullmatch(r"(\S+)\s+\((\S+)\)", source)
    fields["source"], fields["source_version"] = match.groups() if match else (source, fields["version"])
    return fields


def extract(deb: Path, members: dict[str, Path]) -> dict[str, Path]:
    """Extract the wanted regular files (path in package -> temp file) with dpkg-deb."""
    wanted = {m.lstrip("./"): dest for m, dest in members.items()}  # (names, or fnmatch patterns)
    done: dict[str, Path] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.lstrip("./")
                pattern = next((p for p in wanted if p == name or fnmatch.fnmatchcase(name, p)), None)
                if pattern is None or pattern in done:
                    continue
                if not info.isfile():
                    die(f"{deb.name}: {name} is not a regular file")
                source = tar.extractfile(info)
                assert source is not None
                with wanted[pattern].open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                done[pattern] = wanted[pattern]
        # Read to the end (no early break): dpkg-deb reports a broken pipe as an error.
    if proc.returncode != 0:
        die(f"dpkg-deb --fsys-tarfile {deb.name} failed (exit {proc.returncode})")
    return done


def kernel_version(path: Path) -> str | None:
    """The version string of an x86 bzImage (boot protocol header, kernel_version field)."""
    with path.open("rb") as handle:
        head = handle.read(0x10000)
    if head[0x202:0x206] != b"HdrS":
        return None
    offset = int.from_bytes(head[0x20E:0x210], "little")
    if not offset:
        return None
    raw = head[offset + 0x200 : offset + 0x300].split(b"\0", 1)[0]
    return raw.decode("ascii", "replace") or None


# --------------------------------------------------------------------------- main


def load_manifest(out: Path) -> dict:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"schema": SCHEMA, "files": {}}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("files"), dict):
        return {"schema": SCHEMA, "files": {}}
    return data


def is_current(out: Path, name: str, entry: dict | None, quick: bool) -> bool:
    path = out / name
    if not entry or not path.is_file() or path.stat().st_size != entry.get("size"):
        return False
    return quick or sha256_of(path) == entry.get("sha256")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", type=Path, default=default_dir(), help="output directory (default: %(default)s)")
    parser.add_argument("--refresh", action="store_true", help="fetch everything again (current archive versions)")
    parser.add_argument("--check", action="store_true", help="only verify the cache; exit 1 when anything is missing")
    args = parser.parse_args()

    out: Path = args.dir.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs (setup and test) wait for each other
        manifest = load_manifest(out)
        files = manifest["files"]
        todo = [n for n in ARTIFACTS if args.refresh or not is_current(out, n, files.get(n), quick=False)]
        # Files from one package are fetched together (a kernel and its initrd must match).
        groups = {(ARTIFACTS[n][0], ARTIFACTS[n][1][0][0]) for n in todo}
        todo = [n for n in ARTIFACTS if (ARTIFACTS[n][0], ARTIFACTS[n][1][0][0]) in groups]
        for name in ARTIFACTS:
            if name not in todo:
                e = files[name]
                say(f"ok       {name:15} {e['package']} {e['version']} ({e['suite']}) sha256 {e['sha256'][:16]}…")
        if not todo:
            say(f"all artifacts present and matching {out / MANIFEST}")
            return 0
        if args.check:
            say(f"missing or damaged: {', '.join(todo)}")
            return 1

        mirror = configured_mirror()
        suites = sorted({ARTIFACTS[n][0] for n in todo}, key=["bookworm", "trixie", "sid"].index)
        apt = Apt(out / ".apt", mirror, suites)
        apt.update()

        # Group by (suite, package) so a package is downloaded once for several files.
        pending = {name: list(ARTIFACTS[name][1]) for name in todo}
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as tmp_name:
            tmp = Path(tmp_name)
            while pending:
                name = next(iter(pending))
                suite = ARTIFACTS[name][0]
                if not pending[name]:
                    die(f"no candidate package in {suite} contains {name}")
                package = pending[name][0][0]
                users = {
                    n: c[0][1] for n, c in pending.items() if c and c[0][0] == package and ARTIFACTS[n][0] == suite
                }
                real = apt.first_dependency(package[1:], suite) if package.startswith("@") else package
                say(f"apt-get download {real}/{suite}" + (f" (for {package[1:]})" if real != package else ""))
                deb = apt.download(real, suite)
                fields = deb_fields(deb)
                got = extract(deb, {member: tmp / n for n, member in users.items()})
                deb_sha = sha256_of(deb)
                for n, member in users.items():
                    if member.lstrip("./") not in got:
                        say(f"{package} {fields['version']} has no {member}; trying the next candidate for {n}")
                        pending[n].pop(0)
                        continue
                    target = out / n
                    os.replace(tmp / n, target)
                    target.chmod(0o644)
                    entry = {
                        "sha256": sha256_of(target),
                        "size": target.stat().st_size,
                        "package": fields["package"],
                        "version": fields["version"],
                        "suite": suite,
                        "source": fields["source"],
                        "source_version": fields["source_version"],
                        "path": "/" + member.lstrip("./"),
                        "deb": deb.name,
                        "deb_sha256": deb_sha,
                    }
                    if n.startswith("vmlinuz") and (kver := kernel_version(target)):
                        entry["kernel_version"] = kver
                        if m := re.search(r" Debian (\S+) ", kver):
                            entry["kernel_source"], entry["kernel_source_version"] = "linux", m.group(1)
                    files[n] = entry
                    del pending[n]
                    say(f"fetched  {n:15} {entry['package']} {entry['version']} ({suite}) {entry['size']} bytes")
                deb.unlink()

        manifest.update(
            {
                "schema": SCHEMA,
                "mirror": mirror,
                "keyring": os.environ.get("SNPGUARD_APT_KEYRING", KEYRING),
                "files": {n: files[n] for n in ARTIFACTS},
            }
        )
        tmp_manifest = out / f".{MANIFEST}.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_manifest, out / MANIFEST)
        say(f"wrote {out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
