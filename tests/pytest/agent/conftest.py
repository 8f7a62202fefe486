# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the agent's boot tests: a Debian 13 root, an initrd with the agent, a LUKS2 disk, a server.

Everything is real: the root comes from mmdebstrap (cached, agent_root.py), the initrd from
its own ``mkinitramfs``, the disk is LUKS2 (cryptsetup on the host writes the header; the
file system and the marker go in through the libguestfs appliance, which has device
mapper), and the key-release server is ``snpguard server run`` with a certificate for the
address the guest reaches it at (QEMU guestfwd).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_root
from servers import GUEST_SERVER, ServerProcess, stage

MAPPER = "root"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("building the agent's initrd needs root (mmdebstrap, chroot)")
    for tool in ("mmdebstrap", "cryptsetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def crypto_source() -> str:
    """The controller's installed cryptography (an abi3 build: it loads in the image's Python 3.13)."""
    import cryptography

    return str(Path(cryptography.__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def firmware(artifacts: Path) -> Path:
    return artifacts / "OVMF.amdsev.fd"


@dataclass
class LuksDisk:
    path: Path
    uuid: str
    key: bytes
    marker: str

    def copy(self, dest: Path) -> Path:
        shutil.copyfile(self.path, dest)
        return dest


@pytest.fixture(scope="module")
def luks_disk(tmp_path_factory: pytest.TempPathFactory) -> LuksDisk:
    """64 MiB LUKS2 (argon2id, cheap parameters for TCG) holding ext4 with /snpguard-marker."""
    need_root()
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    guestfs = pytest.importorskip("guestfs")
    started = time.monotonic()
    directory = tmp_path_factory.mktemp("luks")
    # 64 random bytes the agent pipes to cryptsetup; printable (base64url of 48 random bytes) only because the
    # libguestfs API takes the passphrase as a string when the file system is put in.
    key = base64.urlsafe_b64encode(secrets.token_bytes(48))
    key_file = directory / "key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    disk, volume = directory / "disk.raw", str(uuid.uuid4())
    marker = f"snpguard-marker-{secrets.token_hex(8)}"
    with open(disk, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", str(key_file),
                    "--pbkdf", "argon2id", "--pbkdf-memory", "65536", "--pbkdf-force-iterations", "4",
                    "--pbkdf-parallel", "1", "--uuid", volume, str(disk)], check=True, capture_output=True)
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(disk), format="raw", readonly=False)
        g.launch()
        g.cryptsetup_open("/dev/sda", key.decode(), MAPPER)
        g.mkfs("ext4", f"/dev/mapper/{MAPPER}")
        g.mount(f"/dev/mapper/{MAPPER}", "/")
        g.write("/snpguard-marker", marker.encode())
        g.umount_all()
        g.cryptsetup_close(f"/dev/mapper/{MAPPER}")
        g.shutdown()
    finally:
        g.close()
    key_file.unlink()
    print(f"stage luks_disk: {time.monotonic() - started:.1f} s", flush=True)
    return LuksDisk(disk, volume, key, marker)


@dataclass
class AgentInitrd:
    kernel: Path
    initrd: Path
    plain_initrd: Path
    kernel_version: str
    seconds: dict[str, float]
    variant: str = "initramfs-tools"

    @property
    def image(self) -> str:
        return f"agent-boot-{self.variant}"

    @property
    def cmdline(self) -> str:
        """What the converter measures: dracut images also get rd.luks=0 (no passphrase prompt beside the agent)."""
        base = f"console=ttyS0 root=/dev/mapper/{MAPPER} ro"
        return base + (" rd.luks=0" if self.variant == "dracut" else "")


@pytest.fixture(scope="module", params=agent_root.VARIANTS)
def agent_initrd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 guest_server: ServerProcess, luks_disk: LuksDisk) -> AgentInitrd:
    """The Debian 13 root's own kernel and an initrd made by its own generator (mkinitramfs or dracut), with and
    without the agent."""
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.config import AgentConfig
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.payload import agent_files

    need_root()
    variant = request.param
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    cached = agent_root.build(variant)
    t = stage(seconds, "debian_root", t0)
    version = agent_root.manifest(cached)["kernels"][0]
    out = tmp_path_factory.mktemp(f"initrd-{variant}")
    with agent_root.work_copy(cached, out / "root") as root:
        t = stage(seconds, "root_copy", t)
        # What the converter writes: the root's crypttab entry (cryptroot then finds it open), fstab.
        (root / "etc/crypttab").write_text(f"{MAPPER} UUID={luks_disk.uuid} none luks,discard,initramfs\n")
        (root / "etc/fstab").write_text(f"/dev/mapper/{MAPPER} / ext4 defaults 0 1\n")
        agent_root.mkinitramfs(root, version, out / "initrd-plain.img", variant)
        t = stage(seconds, f"{variant}_plain", t)
        config = AgentConfig(url=f"https://{GUEST_SERVER[0]}:{GUEST_SERVER[1]}", image=f"agent-boot-{variant}",
                             luks_device=f"UUID={luks_disk.uuid}", mapper_name=MAPPER, report_source="channel",
                             retries=6, backoff_initial=1.0, backoff_max=8.0, timeout=20.0)
        ca_pem = (guest_server.data_dir / "tls" / "ca.pem").read_bytes()
        files = agent_files(config, ca_pem, crypto_source())
        t = stage(seconds, "agent_files", t)
        agent_root.write_files(root, files)
        agent_root.install_marker(root, variant)
        agent_root.mkinitramfs(root, version, out / "initrd-agent.img", variant)
        t = stage(seconds, f"{variant}_agent", t)
        # dracut's network support brings every wired NIC driver (kernel-network-modules), which the stock
        # initramfs-tools initrd already has (MODULES=most): counted apart from the agent's own growth.
        net_drivers = agent_root.net_driver_bytes(root) if variant == "dracut" else 0
        shutil.copyfile(root / "boot" / f"vmlinuz-{version}", out / "vmlinuz")
    (out / "sizes.json").write_text(json.dumps({"plain": (out / "initrd-plain.img").stat().st_size,
                                                "agent": (out / "initrd-agent.img").stat().st_size,
                                                "net_drivers": net_drivers}))
    return AgentInitrd(out / "vmlinuz", out / "initrd-agent.img", out / "initrd-plain.img", version, seconds, variant)
