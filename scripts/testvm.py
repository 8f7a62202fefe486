# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Build, boot and stop a Debian 13 test VM with systemd as PID 1 (QEMU, TCG).

Roles behave differently where systemd runs the services; this machine's tests run
in a container without it.  The VM is the nearest real thing: a stock Debian 13
root built by mmdebstrap from the configured Debian mirror (every package checked
against the archive keys), its own Debian kernel and initramfs, systemd as init,
OpenSSH for Ansible.  Its network is QEMU's user mode with restrict=on: the guest
reaches nothing but the forwarded ports, so whatever a role installs must come from
the controller (see `wheelhouse`).

  testvm.py build       [--refresh]                  cached image (~1 min the first time)
  testvm.py wheelhouse  -r REQ [-c CON] [-p PKG] --dest DIR   wheels for the guest's Python
  testvm.py start       --state DIR [--forward H:G]  boot an overlay, wait for systemd
  testvm.py ssh         --state DIR -- CMD           run a command in it
  testvm.py stop        --state DIR                  power off, remove the overlay

Cache: ${SNPGUARD_TESTVM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/snpguard/testvm}.  The
image is rebuilt when its recipe changes (or with --refresh); each `start` boots a
fresh copy-on-write overlay, so a test never sees another test's changes.

Standard library only; needs mmdebstrap, mkfs.ext4, qemu-img, qemu-system-x86_64,
ssh and ssh-keygen.  `build` needs root (mmdebstrap's root mode).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_artifacts import KEYRING, configured_mirror

SUITE = "trixie"
IMAGE_NAME = f"debian-{SUITE}-systemd"
DISK_SIZE = "3G"
# What the image holds beyond the `apt` variant: systemd as init, a kernel with its
# initramfs, SSH, and what Ansible needs to manage a Debian host (python3, python3-apt
# for the apt module); python3-venv because roles create virtual environments.
PACKAGES = [
    "systemd-sysv",
    "linux-image-amd64",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-venv",
    "ca-certificates",
    "procps",
    "iproute2",
]
DPKG_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"]
# Bumped whenever the customisation below changes what a booted guest looks like.
RECIPE_REVISION = 1
GUEST_SSH_PORT = 22


def say(msg: str) -> None:
    print(f"testvm: {msg}", file=sys.stderr, flush=True)


class TestVmError(Exception):
    """A step failed; the message says which and why."""


def cache_root() -> Path:
    if os.environ.get("SNPGUARD_TESTVM_CACHE"):
        return Path(os.environ["SNPGUARD_TESTVM_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "snpguard" / "testvm"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, **kwargs)
    except FileNotFoundError as exc:
        raise TestVmError(f"{argv[0]} is not installed (needed by testvm.py)") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"")[-2000:]
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        raise TestVmError(f"{shlex.join(argv[:3])} ... failed with exit status {exc.returncode}\n{tail}") from exc


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- image


def recipe(mirror: str) -> dict:
    return {
        "suite": SUITE,
        "mirror": mirror,
        "packages": PACKAGES,
        "dpkg_excludes": DPKG_EXCLUDES,
        "disk_size": DISK_SIZE,
        "revision": RECIPE_REVISION,
    }


def recipe_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def image_dir() -> Path:
    return cache_root() / IMAGE_NAME


def load_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for name in ("disk.qcow2", "vmlinuz", "initrd.img", "id_ed25519", "host_ed25519.pub"):
        if not (directory / name).is_file():
            return None
    return manifest


def new_ssh_key(path: Path, comment: str) -> None:
    """An Ed25519 key pair without passphrase at path and path.pub."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], capture_output=True)


def customise(root: Path, client_key_pub: str) -> None:
    """Make the root bootable as a VM disk and reachable by SSH with our key only."""
    (root / "etc/hostname").write_text("snpguard-testvm\n", encoding="utf-8")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 snpguard-testvm\n::1 localhost\n", encoding="utf-8")
    (root / "etc/fstab").write_text("LABEL=testvm-root / ext4 rw,errors=remount-ro 0 1\n", encoding="utf-8")
    network = root / "etc/systemd/network/10-wired.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=en*\n\n[Network]\nDHCP=yes\n", encoding="utf-8")
    # QEMU's user-mode network answers DNS at 10.0.2.3 (unused with restrict=on, but harmless).
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("nameserver 10.0.2.3\n", encoding="utf-8")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(client_key_pub, encoding="utf-8")
    (ssh_dir / "authorized_keys").chmod(0o600)
    sshd = root / "etc/ssh/sshd_config.d/10-snpguard-testvm.conf"
    sshd.write_text("PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n", encoding="utf-8")
    # Nothing in the guest may reach for the network on its own.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        link = root / "etc/systemd/system/timers.target.wants" / timer
        if link.is_symlink():
            link.unlink()
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"], capture_output=True)
    # Host keys: one set per image, generated here, recorded for strict host-key checking.
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    new_ssh_key(root / "etc/ssh/ssh_host_ed25519_key", "snpguard-testvm")
    (root / "etc/machine-id").write_text("", encoding="utf-8")


def build(refresh: bool = False) -> Path:
    """The cached image directory, built when missing, stale or asked to."""
    mirror = configured_mirror()
    spec = recipe(mirror)
    wanted = recipe_id(spec)
    target = image_dir()
    with locked(cache_root() / f".{IMAGE_NAME}.lock"):
        manifest = load_manifest(target)
        if manifest and manifest.get("recipe_id") == wanted and not refresh:
            say(f"image {target} is current (recipe {wanted})")
            return target
        if os.geteuid() != 0:
            raise TestVmError("building the test VM image needs root (mmdebstrap --mode=root)")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{IMAGE_NAME}-", dir=cache_root()))
        try:
            root = work / "root"
            new_ssh_key(work / "id_ed25519", "snpguard-testvm-client")
            say(f"mmdebstrap {SUITE} from {mirror} ({len(PACKAGES)} packages beyond the apt variant)")
            argv = [
                "mmdebstrap",
                "--variant=apt",
                "--mode=root",
                "--format=directory",
                "--quiet",
                f"--include={','.join(PACKAGES)}",
            ]
            argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
            argv += [SUITE, str(root), f"deb [signed-by={KEYRING}] {mirror} {SUITE} main"]
            run(argv, capture_output=True)
            customise(root, (work / "id_ed25519.pub").read_text(encoding="utf-8"))
            boot = root / "boot"
            kernels = sorted(boot.glob("vmlinuz-*"))
            if len(kernels) != 1:
                raise TestVmError(f"expected one kernel in the image's /boot, found {[k.name for k in kernels]}")
            version = kernels[0].name.removeprefix("vmlinuz-")
            shutil.copyfile(kernels[0], work / "vmlinuz")
            shutil.copyfile(boot / f"initrd.img-{version}", work / "initrd.img")
            shutil.copyfile(root / "etc/ssh/ssh_host_ed25519_key.pub", work / "host_ed25519.pub")
            python = os.readlink(root / "usr/bin/python3")  # python3.13
            run(
                ["mkfs.ext4", "-q", "-F", "-L", "testvm-root", "-d", str(root), str(work / "disk.raw"), DISK_SIZE],
                capture_output=True,
            )
            run(
                ["qemu-img", "convert", "-O", "qcow2", str(work / "disk.raw"), str(work / "disk.qcow2")],
                capture_output=True,
            )
            (work / "disk.raw").unlink()
            shutil.rmtree(root)
            manifest = {
                "recipe_id": wanted,
                "recipe": spec,
                "kernel": version,
                "python": python.removeprefix("python"),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            work.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            say(f"built {target} in {manifest['build_seconds']} s (kernel {version}, Python {manifest['python']})")
            return target
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- wheelhouse


def wheelhouse(requirements: list[Path], packages: list[str], dest: Path, constraints: Sequence[Path] = ()) -> Path:
    """Download binary wheels for the guest's Python, so pip in the guest needs no index.

    ``constraints`` (pip ``-c`` files) pin the versions, as the role pins them when it installs.
    """
    manifest = load_manifest(image_dir())
    if manifest is None:
        raise TestVmError("no test VM image yet: run `testvm.py build` first")
    python = manifest["python"]
    digest = hashlib.sha256(python.encode())
    for path in requirements:
        digest.update(path.read_bytes())
    for path in constraints:
        digest.update(b"constraints\0" + path.read_bytes())
    for package in packages:
        digest.update(package.encode() + b"\0")
    stamp = dest / ".complete"
    wanted = digest.hexdigest()
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == wanted:
        say(f"wheelhouse {dest} is current")
        return dest
    tag = python.replace(".", "")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(partial),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--abi",
        f"cp{tag}",
    ]
    for platform in (
        "manylinux_2_39_x86_64",
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux1_x86_64",
    ):
        argv += ["--platform", platform]
    for path in requirements:
        argv += ["-r", str(path)]
    for path in constraints:
        argv += ["-c", str(path)]
    run(argv + packages, capture_output=True)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    stamp.write_text(wanted + "\n", encoding="utf-8")
    say(f"wheelhouse {dest}: {len(list(dest.glob('*.whl')))} wheels for CPython {python}")
    return dest


# --------------------------------------------------------------------------- running


def state_file(state: Path) -> Path:
    return state / "state.json"


def read_state(state: Path) -> dict | None:
    try:
        return json.loads(state_file(state).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def qemu_alive(pid: int, state: Path) -> bool:
    """True when pid is still our QEMU (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"qemu-system-x86_64") and str(state).encode() in b" ".join(cmdline)


def ssh_argv(info: dict, batch: bool = True) -> list[str]:
    argv = [
        "ssh",
        "-i",
        info["key"],
        "-p",
        str(info["ssh_port"]),
        "-o",
        f"UserKnownHostsFile={info['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
    ]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    return [*argv, "root@127.0.0.1"]


def parse_forward(text: str) -> tuple[int, int]:
    try:
        host, guest = (int(part) for part in text.split(":"))
    except ValueError as exc:
        raise TestVmError(f"--forward must be HOSTPORT:GUESTPORT, got {text!r}") from exc
    for port in (host, guest):
        if not 0 < port < 65536:
            raise TestVmError(f"--forward {text}: port {port} is out of range")
    return host, guest


def start(state: Path, forwards: list[tuple[int, int]], ssh_port: int, cpus: int, memory: int, timeout: float) -> dict:
    image = image_dir()
    manifest = load_manifest(image)
    if manifest is None:
        raise TestVmError("no test VM image yet: run `testvm.py build` first")
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    previous = read_state(state)
    if previous and qemu_alive(previous["pid"], state):
        raise TestVmError(f"a test VM already runs from {state} (pid {previous['pid']}); stop it first")
    overlay = state / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image / "disk.qcow2"), str(overlay)],
        capture_output=True,
    )
    host_key = (image / "host_ed25519.pub").read_text(encoding="utf-8").split()
    (state / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {host_key[0]} {host_key[1]}\n", encoding="utf-8")
    key = state / "id_ed25519"
    shutil.copyfile(image / "id_ed25519", key)
    key.chmod(0o600)
    netdev = f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:{GUEST_SSH_PORT}"
    netdev += "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in forwards)
    console = state / "console.log"
    pidfile = state / "qemu.pid"
    pidfile.unlink(missing_ok=True)
    argv = [
        "qemu-system-x86_64",
        "-name",
        "snpguard-testvm,process=snpguard-testvm",
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-cpu",
        "max,la57=off",  # five-level paging under TCG: occasional guest panics (libguestfs turns it off too)
        "-smp",
        str(cpus),
        "-m",
        str(memory),
        "-kernel",
        str(image / "vmlinuz"),
        "-initrd",
        str(image / "initrd.img"),
        "-append",
        "root=LABEL=testvm-root rw console=ttyS0 systemd.show_status=auto",
        "-drive",
        f"file={overlay},if=virtio,format=qcow2,discard=unmap",
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{console}",
        "-monitor",
        "none",
        "-display",
        "none",
        "-daemonize",
        "-pidfile",
        str(pidfile),
    ]
    started = time.monotonic()
    run(argv, capture_output=True)
    pid = int(pidfile.read_text(encoding="utf-8").strip())
    info = {
        "pid": pid,
        "ssh_port": ssh_port,
        "forwards": [{"host": host, "guest": guest} for host, guest in forwards],
        "key": str(key),
        "known_hosts": str(state / "known_hosts"),
        "console": str(console),
        "image": str(image),
        "kernel": manifest["kernel"],
        "python": manifest["python"],
    }
    state_file(state).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    say(f"booting (pid {pid}, ssh on 127.0.0.1:{ssh_port}); waiting for systemd")
    while True:
        if not qemu_alive(pid, state):
            raise TestVmError(f"QEMU exited during boot; console:\n{tail(console)}")
        if time.monotonic() - started > timeout:
            stop(state)
            raise TestVmError(f"the VM did not finish booting within {timeout:.0f} s; console:\n{tail(console)}")
        try:
            probe = subprocess.run(
                [*ssh_argv(info), "systemctl is-system-running --wait"],
                capture_output=True,
                text=True,
                timeout=max(1.0, timeout - (time.monotonic() - started)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            continue  # the deadline check above reports it, with the console
        status = probe.stdout.strip()
        if status in ("running", "degraded"):
            break
        time.sleep(2)
    if status == "degraded":
        failed = subprocess.run(
            [*ssh_argv(info), "systemctl --failed --no-legend --plain"], capture_output=True, text=True, check=False
        ).stdout
        say(f"systemd is degraded; failed units:\n{failed}")
    info["boot_seconds"] = round(time.monotonic() - started, 1)
    info["system_state"] = status
    state_file(state).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    say(f"up in {info['boot_seconds']} s (systemd: {status})")
    return info


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no console output)"


def stop(state: Path) -> bool:
    """Power the VM off and remove its overlay; True when one was running."""
    state = state.resolve()
    info = read_state(state)
    was_running = False
    if info and qemu_alive(info["pid"], state):
        was_running = True
        os.kill(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while qemu_alive(info["pid"], state) and time.monotonic() < deadline:
            time.sleep(0.2)
        if qemu_alive(info["pid"], state):
            os.kill(info["pid"], signal.SIGKILL)
    for name in ("overlay.qcow2", "qemu.pid", "state.json", "id_ed25519", "known_hosts"):
        (state / name).unlink(missing_ok=True)
    return was_running


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build or reuse the cached image")
    p_build.add_argument("--refresh", action="store_true", help="rebuild even when the cached image is current")
    p_wheels = sub.add_parser("wheelhouse", help="download wheels for the guest's Python")
    p_wheels.add_argument("-r", "--requirement", action="append", default=[], type=Path)
    p_wheels.add_argument("-c", "--constraint", action="append", default=[], type=Path)
    p_wheels.add_argument("-p", "--package", action="append", default=[])
    p_wheels.add_argument("--dest", required=True, type=Path)
    p_start = sub.add_parser("start", help="boot a fresh overlay and wait for systemd")
    p_start.add_argument("--state", required=True, type=Path)
    p_start.add_argument("--ssh-port", type=int, default=18622)
    p_start.add_argument("--forward", action="append", default=[], help="HOSTPORT:GUESTPORT on 127.0.0.1")
    p_start.add_argument("--cpus", type=int, default=2)
    p_start.add_argument("--memory", type=int, default=2048, help="MiB")
    p_start.add_argument("--timeout", type=float, default=300)
    p_ssh = sub.add_parser("ssh", help="run a command in the running VM")
    p_ssh.add_argument("--state", required=True, type=Path)
    p_ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    p_stop = sub.add_parser("stop", help="power off and clean up")
    p_stop.add_argument("--state", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(args.refresh))
        elif args.command == "wheelhouse":
            print(wheelhouse(args.requirement, args.package, args.dest, args.constraint))
        elif args.command == "start":
            info = start(
                args.state,
                [parse_forward(f) for f in args.forward],
                args.ssh_port,
                args.cpus,
                args.memory,
                args.timeout,
            )
            print(json.dumps(info, indent=2))
        elif args.command == "ssh":
            info = read_state(args.state.resolve())
            if info is None:
                raise TestVmError(f"no test VM runs from {args.state}")
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            # One argument is a shell command line as typed; several are quoted one by one.
            line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
            return subprocess.run([*ssh_argv(info, batch=False), line], check=False).returncode
        elif args.command == "stop":
            print(json.dumps({"stopped": stop(args.state)}))
    except TestVmError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
