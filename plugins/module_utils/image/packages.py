# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Packages an image lacks, fetched on the conversion host for the image's own release.

The image is never given a network: apt-get runs here, with a private state whose dpkg
status *is the image's* (read from its /var/lib/dpkg/status), so apt resolves exactly
the packages and dependencies that image is missing, from its release's suite, signed by
the Debian archive keyring.  The .deb files are then installed offline inside the
appliance with ``dpkg -i``.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
from collections.abc import Callable, Iterable

from ..common.process import Runner
from ..snp.errors import SnpError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_TIMEOUT = 900.0


def installed_packages(status: str) -> set[str]:
    """Names of the packages a dpkg status file says are installed."""
    names, name = set(), None
    for line in [*status.splitlines(), ""]:
        if line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Status:") and name and line.split()[-1] == "installed":
            names.add(name)
        elif not line.strip():
            name = None
    return names


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    stanza: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza = {}
        elif ":" in line and line[0] not in " \t":
            key, value = line.split(":", 1)
            stanza[key.strip().lower()] = value.strip()
    return


def configured_mirror(read: Callable[[str], str] | None = None) -> str:
    """The Debian archive this host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    def default_read(path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    read = read or default_read
    candidates = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            for stanza in _stanzas(read(path)):
                if stanza.get("enabled", "yes").lower() != "no" and "deb" in stanza.get("types", "").split():
                    candidates += stanza.get("uris", "").split()
        except OSError:
            continue
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            text = read(path)
        except OSError:
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append(words[1])
    for uri in candidates:
        if re.search(r"/debian/?$", uri) and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def fetch_debs(wanted: list[str], *, codename: str, status: str, work: str, run: Runner,
               mirror: str | None = None, keyring: str = KEYRING) -> list[str]:
    """Download ``wanted`` and whatever the image lacks for them; the paths of the .deb files.

    ``status`` is the image's dpkg status; ``work`` a private directory (kept as a cache).
    An empty list when the image has them all.
    """
    missing = [name for name in wanted if name not in installed_packages(status)]
    if not missing:
        return []
    if not re.fullmatch(r"[a-z]+", codename or ""):
        raise SnpError(f"the image's release codename {codename!r} is not usable for apt", field="image.codename")
    if not os.path.isfile(keyring):
        raise SnpError("the Debian archive keyring is missing (apt-get install debian-archive-keyring)",
                       field="keyring", path=keyring)
    mirror = (mirror or configured_mirror()).rstrip("/")
    root = os.path.join(work, codename)
    os.makedirs(root, exist_ok=True)
    # Two conversions on one host may share the cache (apt's own locking is off: it wants
    # the system's lock paths): one apt run at a time, each with its own image's status.
    with open(os.path.join(root, ".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _fetch_locked(missing, root=root, codename=codename, status=status, run=run,
                             mirror=mirror, keyring=keyring)


def _fetch_locked(missing: list[str], *, root: str, codename: str, status: str, run: Runner,
                  mirror: str, keyring: str) -> list[str]:
    archives = os.path.join(root, "cache", "archives")
    for sub in ("etc/preferences.d", "lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "etc", "sources.list"), "w", encoding="utf-8") as handle:
        handle.write(f"deb [signed-by={keyring}] {mirror} {codename} main\n")
    with open(os.path.join(root, "status"), "w", encoding="utf-8") as handle:
        handle.write(status)
    options = [f"-oDir::Etc::SourceList={root}/etc/sources.list", "-oDir::Etc::SourceParts=-",
               f"-oDir::Etc::Preferences={root}/etc/preferences",
               f"-oDir::Etc::PreferencesParts={root}/etc/preferences.d",
               f"-oDir::State::Lists={root}/lists", f"-oDir::State::Status={root}/status",
               f"-oDir::Cache={root}/cache", "-oAPT::Architecture=amd64", "-oAPT::Architectures::=amd64",
               "-oAcquire::Languages=none", "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root",
               "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"]
    for args in (["update"], ["install", "--download-only", "-y", "--no-install-recommends", *missing]):
        rc, out, err = run(["apt-get", "-q", *options, *args], APT_TIMEOUT)
        problems = [line for line in (out + err).splitlines() if re.match(r"^\s*(E|Err):", line)]
        if rc != 0 or problems:
            raise SnpError(f"apt-get {args[0]} for {codename} from {mirror} failed (exit {rc}): "
                           + " / ".join((problems or (out + err).splitlines())[-5:]), field="packages")
    # Which packages this resolution installs (apt's simulation), and their files in the cache.
    rc, out, err = run(["apt-get", "-q", "-s", *options, "install", "-y", "--no-install-recommends", *missing],
                       APT_TIMEOUT)
    debs = []
    for name, version, arch in re.findall(r"^Inst (\S+) \((\S+) .*?\[(\S+)\]\)", out, re.M):
        path = os.path.join(archives, f"{name}_{version.replace(':', '%3a')}_{arch}.deb")
        if not os.path.isfile(path):
            raise SnpError(f"apt-get did not fetch {name} {version}", field="packages", path=path)
        debs.append(path)
    if not debs:
        raise SnpError(f"apt-get fetched nothing for {', '.join(missing)}", field="packages")
    return debs
