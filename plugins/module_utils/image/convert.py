# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Convert a stock cloud image into a confidential one (``mode: luks`` or ``mode: verity``).

Input: a stock qcow2 (Debian or Ubuntu, GPT, ext4 root as its last partition, its initrd made by
initramfs-tools or by dracut with systemd).  Output:
a new qcow2 whose root partition is a LUKS2 container (argon2id keyslot, a fresh random
key) holding a copy of the root file system, with the key-release agent, its config and
the server's CA installed and the initrd regenerated inside the image; and a staging
dir (``staging.py``) with the kernel, that initrd, the measured cmdline and the volume
key sealed to the server's ingestion key.

``mode: verity`` instead keeps the root in the clear but read-only: the file system is
made exactly as large as the stock root partition, the partition grows by room for a
dm-verity hash tree appended after it (``veritysetup format --hash-offset``), and the root
hash goes onto the measured kernel command line, so the launch measurement covers every
block of the root.  No key exists in this mode; the initrd (``agent/verity.py``) opens the
root with that hash and gives /var, /home, /root, /tmp and /etc writable tmpfs layers.

Why a copy and not in-place encryption: the stock image is never modified, and a failure
at any step leaves no output at all — the new image and the staging dir are written
under temporary names and renamed into place only when everything succeeded.

Why the volume key is 32 random bytes written as 64 hex digits: it travels as text
through libguestfs and cryptsetup's key-file, and the agent pipes exactly those bytes
to ``cryptsetup open --key-file=-`` at boot.  256 bits of randomness need no stretching,
so the argon2id keyslot is cheap by default (64 MiB, 4 iterations): unlocking under an
emulated CPU in a small VM stays quick, and a brute force of the keyslot is as hopeless
as of the key itself.

Idempotence: the staging manifest records the SHA-256 of the stock image and of the
conversion options; a rerun with both unchanged and the output intact does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ..bundle.launch import LaunchFacts
from ..common.fileio import create_private, file_digest
from ..common.process import Runner
from ..keyrelease.protocol import seal_for_ingestion
from ..snp.errors import SnpError
from ..snp.policy import parse_policy
from . import staging as stg
from .appliance import appliance, call, disk_devices, kernel_devices, shell
from .inspect import ImageFacts, Kernel, inspect_image, select_kernel
from .packages import fetch_debs

Progress = Callable[[str], None]
MODES = ("luks", "verity")
#: What each mode needs in the image beyond a stock cloud image: for luks, cryptsetup for the initrd
#: and cffi's per-Python backend for the abi3 cryptography the agent brings; for verity, veritysetup.
PACKAGES = {"luks": ["cryptsetup-bin", "python3-cffi-backend"], "verity": ["cryptsetup-bin"]}
#: ...and, in a dracut image, dracut's network modules for the agent (systemd-networkd in the initrd).
DRACUT_PACKAGES = {"luks": ["dracut-network"], "verity": []}
GENERATORS = ("initramfs-tools", "dracut")
MAPPER = "root"
LUKS_HEADER_MARGIN = 64 << 20  # the output disk grows by this: room for the LUKS2 header (16 MiB)
VERITY_BLOCK = 4096
SYSROOT = "/sysroot"  # where libguestfs mounts the image for its API calls (handle.command chroots there)
QEMU_IMG_TIMEOUT = 3600.0


@dataclass
class ConvertOptions:
    source: str
    output: str
    staging_dir: str
    name: str
    firmware: str
    agent_url: str
    agent_ca_file: str
    mode: str = "luks"
    kernel: str | None = None
    vcpus: list[int] = field(default_factory=lambda: [1])
    vcpu_type: str = "EPYC-v4"
    policy: int = 0x30000
    guest_features: int = 0x1
    extra_cmdline: str = ""
    report_source: str = "auto"
    ingestion_public_key: str | None = None  # base64 X25519 public key of the server
    volume_key_file: str | None = None  # explicit: write the plaintext key here (0600), never by default
    crypto_source: str | None = None  # cryptography for the agent: a site-packages dir or a wheel
    pbkdf_memory_kib: int = 65536
    pbkdf_iterations: int = 4
    integrity: bool = False
    package_mirror: str | None = None
    package_cache: str | None = None
    force_tcg: bool = False

    def validate(self) -> ConvertOptions:
        if self.mode not in MODES:
            raise SnpError(f"must be one of {', '.join(MODES)}", field="mode")
        for name in ("source", "firmware") + (("agent_ca_file",) if self.mode == "luks" else ()):
            path = getattr(self, name)
            if not path or not os.path.isfile(path):
                raise SnpError("is not a file", field=name, path=path)
        for name in ("output", "staging_dir"):
            if not getattr(self, name):
                raise SnpError("is required", field=name)
        if os.path.abspath(self.output) == os.path.abspath(self.source):
            raise SnpError("must not be the source image (the stock image is never modified)", field="output")
        if self.mode == "verity":
            given = [name for name in ("ingestion_public_key", "volume_key_file") if getattr(self, name)]
            if given or self.integrity:
                raise SnpError("mode verity has no volume key and no dm-integrity (the root is read-only and "
                               "hashed); leave these out", field=(given or ["integrity"])[0])
        else:
            if not self.agent_url:
                raise SnpError("is required with mode luks (the agent asks this server for the key)",
                               field="server_url")
            if (self.ingestion_public_key is None) == (self.volume_key_file is None):
                raise SnpError("exactly one of ingestion_public_key (the key leaves only sealed to the server) and "
                               "volume_key_file (an explicit 0600 plaintext copy) is required",
                               field="ingestion_public_key")
        if not self.vcpus or any(not isinstance(n, int) or not 1 <= n <= 512 for n in self.vcpus):
            raise SnpError("must be vCPU counts between 1 and 512", field="vcpus")
        parse_policy(self.policy)
        if not 8 * 1024 <= self.pbkdf_memory_kib <= 4 * 1024 * 1024:
            raise SnpError("must be between 8192 and 4194304 KiB", field="pbkdf_memory_kib")
        if not 4 <= self.pbkdf_iterations <= 1000:
            raise SnpError("must be between 4 and 1000 (argon2id's minimum is 4)", field="pbkdf_iterations")
        if "\n" in self.extra_cmdline:
            raise SnpError("must be one line", field="extra_cmdline")
        return self

    def digest(self, source_sha256: str, payload_sha256: str) -> str:
        facts = asdict(self)
        for transient in ("force_tcg", "package_cache", "volume_key_file"):
            facts.pop(transient)
        facts.update(source_sha256=source_sha256, payload_sha256=payload_sha256,
                     firmware_sha384=file_digest(self.firmware, "sha384", field="firmware"))
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def packages_for(facts: ImageFacts, mode: str) -> list[str]:
    """What the conversion installs into this image for ``mode`` (those already there are skipped later)."""
    return PACKAGES[mode] + (DRACUT_PACKAGES[mode] if facts.init_system == "dracut" else [])


def measured_cmdline(facts: ImageFacts, options: ConvertOptions, verity: list[str] | None = None) -> str:
    """root on the opened mapper, the image's own arguments, networking for the agent (luks) or the
    verity parameters (``verity``: root hash, data partition, hash offset), the extras.

    initramfs-tools brings the network up for ``ip=`` (DHCP here); dracut's initrd carries
    ``rd.neednet=1`` in its own measured /etc/cmdline.d and gets ``rd.luks=0``, so that its
    systemd-cryptsetup never asks for a passphrase beside the agent.
    """
    args = [f"root=/dev/mapper/{MAPPER}", "ro", *facts.cmdline]
    if options.mode == "luks" and facts.init_system == "dracut":
        args.append("rd.luks=0")
    elif options.mode == "luks" and not any(a.startswith("ip=") for a in args):
        args.append("ip=dhcp")
    if options.mode == "verity":
        args += verity if verity is not None else ["snpguard.verity.roothash=<computed>", "..."]
    if options.extra_cmdline.strip():
        args += options.extra_cmdline.split()
    return " ".join(args)


def verity_hash_size(data_bytes: int) -> int:
    """Bytes of a SHA-256 dm-verity tree of 4 KiB blocks with its superblock (veritysetup's layout)."""
    per_block = VERITY_BLOCK // 32
    blocks, total = -(-data_bytes // VERITY_BLOCK), 1  # the superblock
    while blocks > 1:
        blocks = -(-blocks // per_block)
        total += blocks
    return total * VERITY_BLOCK


def verity_data_blocks(facts: ImageFacts) -> int:
    """The verity root's file system in 4 KiB blocks: the stock root partition's size (the tree follows it)."""
    return facts.root.size // VERITY_BLOCK


def disk_growth(options: ConvertOptions, root_size: int) -> int:
    """How much larger the output disk is: the LUKS2 header, or the hash tree (both with slack), whole MiB."""
    if options.mode == "luks":
        return LUKS_HEADER_MARGIN
    return max(LUKS_HEADER_MARGIN, -(-(verity_hash_size(root_size) + (16 << 20)) // (1 << 20)) << 20)


def _payload(options: ConvertOptions, luks_uuid: str) -> list[Any]:
    from ..agent.config import AgentConfig
    from ..agent.payload import PayloadFile, agent_files
    if options.mode == "verity":
        from ..agent.verity import boot_report_files, verity_scripts
        return [PayloadFile(dest, data, mode)
                for dest, data, mode in verity_scripts() + boot_report_files(options.report_source)]
    with open(options.agent_ca_file, "rb") as handle:
        ca_pem = handle.read()
    config = AgentConfig(url=options.agent_url, image=options.name, luks_device=f"UUID={luks_uuid}",
                         mapper_name=MAPPER, report_source=options.report_source).validate()
    return agent_files(config, ca_pem, options.crypto_source or default_crypto_source())


def default_crypto_source() -> str:
    """The site-packages dir of the ``cryptography`` this Python runs (an abi3 build)."""
    import cryptography
    return os.path.dirname(os.path.dirname(os.path.abspath(cryptography.__file__)))


def payload_digest(files: list[Any]) -> str:
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.dest):
        digest.update(f"{item.dest}\0{item.mode:o}\0{len(item.data)}\0".encode())
        digest.update(item.data)
    return digest.hexdigest()


@dataclass
class Result:
    changed: bool
    output: str
    staging_dir: str
    plan: list[str]
    kernel_version: str | None = None
    cmdline: str | None = None
    image: dict[str, Any] = field(default_factory=dict)
    luks: dict[str, Any] = field(default_factory=dict)
    verity: dict[str, Any] = field(default_factory=dict)
    packages: list[str] = field(default_factory=list)


def up_to_date(options: ConvertOptions, source_sha256: str, payload_sha256: str) -> stg.Staging | None:
    """The existing staging dir when it records this very conversion and the output is intact."""
    if not (os.path.isfile(options.output) and os.path.isfile(os.path.join(options.staging_dir, stg.MANIFEST))):
        return None
    try:
        current = stg.read_staging(options.staging_dir)
    except SnpError:
        return None
    if current.options_digest != options.digest(source_sha256, payload_sha256):
        return None
    if current.output.get("sha256") != file_digest(options.output, field="output"):
        return None
    return current


def convert(options: ConvertOptions, run: Runner, *, check_mode: bool = False,
            progress: Progress | None = None) -> Result:
    say = progress or (lambda text: None)
    options.validate()
    say(f"hashing the stock image {options.source}")
    source_sha256 = file_digest(options.source, field="source")
    # The payload's digest does not depend on the LUKS UUID's value: use a fixed one to decide.
    probe = _payload(options, "00000000-0000-0000-0000-000000000000")
    payload_sha256 = payload_digest(probe)
    current = up_to_date(options, source_sha256, payload_sha256)
    if current is not None:
        say("up to date: the staging dir records this stock image and these options")
        return Result(changed=False, output=options.output, staging_dir=options.staging_dir, plan=[],
                      kernel_version=current.kernel_version, cmdline=current.cmdline, verity=current.verity or {})
    if check_mode:
        say("inspecting the stock image (read-only)")
        with appliance([(options.source, "qcow2", True)], force_tcg=options.force_tcg) as handle:
            facts, _status = _inspect(handle)
        return _plan(options, facts)[1]
    staging_tmp = stg.new_dir_beside(options.staging_dir)
    output_tmp = os.path.join(os.path.dirname(os.path.abspath(options.output)),
                              f".{os.path.basename(options.output)}.tmp-{secrets.token_hex(4)}")
    key = bytearray(secrets.token_hex(32).encode())
    try:
        # The new disk is made before the source is inspected, so that one appliance does both (one
        # emulated boot less): its size comes from the source's virtual size (the verity tree's room
        # from the whole disk, a bound on the root's). A source the inspection refuses is a failure
        # like any other: the empty disk is removed below.
        size = output_size(options, _virtual_size(options.source, run))
        rc, out, err = run(["qemu-img", "create", "-q", "-f", "qcow2", output_tmp, str(size)], QEMU_IMG_TIMEOUT)
        if rc != 0:
            raise SnpError(f"qemu-img create failed: {(err or out).strip()}", field="output", path=output_tmp)
        say("inspecting the stock image (read-only)")
        with appliance([(options.source, "qcow2", True, "source"), (output_tmp, "qcow2", False, "target")],
                       force_tcg=options.force_tcg) as handle, ThreadPoolExecutor(1) as pool:
            facts, status = _inspect(handle)
            kernel, result = _plan(options, facts)
            cmdline = result.cmdline
            cache = options.package_cache or os.path.join(os.path.dirname(os.path.abspath(options.output)),
                                                          ".snpguard-debs")
            wanted = packages_for(facts, options.mode)
            say(f"resolving what {facts.distro} {facts.codename} lacks of {', '.join(wanted)} (beside the copy)")
            # apt runs on this host while the appliance copies the root; the build waits for it only
            # when it installs the packages.
            fetched = pool.submit(fetch_debs, wanted, codename=facts.codename, status=status, work=cache, run=run,
                                  mirror=options.package_mirror)
            built = _build(handle, options, facts, kernel, fetched.result, key, size, staging_tmp, say)
        result.packages = [os.path.basename(d) for d in fetched.result()]
        if options.mode == "verity":
            from ..agent.verity import verity_cmdline
            result.verity = built
            cmdline = result.cmdline = measured_cmdline(
                facts, options, verity_cmdline(built["root_hash"], built["partuuid"], built["hash_offset"]))
        else:
            result.luks = built
            say("sealing the volume key")
        if options.ingestion_public_key is not None:
            import base64
            sealed = seal_for_ingestion(bytes(key), base64.b64decode(options.ingestion_public_key, validate=True),
                                        options.name)
            with open(os.path.join(staging_tmp, stg.SEALED_KEY), "w", encoding="ascii") as handle:
                handle.write(base64.b64encode(sealed).decode() + "\n")
        say(f"hashing the new image {options.output}")
        output_sha256 = file_digest(output_tmp, field="output")
        record = stg.Staging(
            directory=staging_tmp, image=options.name, mode=options.mode, kernel_version=kernel.version,
            cmdline=cmdline, firmware_sha384=file_digest(options.firmware, "sha384", field="firmware"),
            launch=LaunchFacts(vcpus=sorted(options.vcpus), vcpu_type=options.vcpu_type, policy=options.policy,
                               guest_features=options.guest_features),
            kernel_sha256=file_digest(os.path.join(staging_tmp, stg.KERNEL), field="kernel"),
            initrd_sha256=file_digest(os.path.join(staging_tmp, stg.INITRD), field="initrd"),
            sealed_volume_key=stg.SEALED_KEY if options.ingestion_public_key is not None else None,
            verity=result.verity or None,
            source={"path": os.path.abspath(options.source), "sha256": source_sha256},
            output={"path": os.path.abspath(options.output), "sha256": output_sha256},
            options_digest=options.digest(source_sha256, payload_sha256))
        stg.write_manifest(staging_tmp, record)
        if options.volume_key_file:
            if os.path.lexists(options.volume_key_file):
                os.unlink(options.volume_key_file)
            create_private(options.volume_key_file, bytes(key))
        os.replace(output_tmp, options.output)
        stg.publish_dir(staging_tmp, options.staging_dir)
        say(f"done: {options.output}, staging dir {options.staging_dir}")
        return result
    except BaseException:
        stg.discard_dir(staging_tmp)
        if os.path.exists(output_tmp):
            os.unlink(output_tmp)
        raise
    finally:
        for index in range(len(key)):
            key[index] = 0


def _inspect(handle: Any) -> tuple[ImageFacts, str]:
    """The facts of the appliance's first drive (the stock image) and its dpkg status (for apt)."""
    facts = inspect_image(handle)
    call("mount the root read-only", handle.mount_ro, facts.root.device, "/")
    status = call("read the dpkg status", handle.read_file, "/var/lib/dpkg/status").decode("utf-8", "replace")
    call("unmount", handle.umount_all)
    return facts, status


def _plan(options: ConvertOptions, facts: ImageFacts) -> tuple[Kernel, Result]:
    """The kernel to boot and the conversion's plan, or the refusal that names what this image lacks."""
    kernel = select_kernel(facts, options.kernel, options.mode)
    if facts.init_system not in GENERATORS:
        raise SnpError(f"the image builds its initrd with {facts.init_system}; supported: {', '.join(GENERATORS)}",
                       field="image.initrd_generator")
    if facts.init_system == "dracut" and not facts.systemd:
        raise SnpError("a dracut image without systemd: the agent and the verity scripts run as units of "
                       "dracut's systemd initrd", field="image.initrd_generator")
    if max(facts.partitions, key=lambda p: p.start) is not facts.root:
        raise SnpError("the root partition must be the last one on the disk (it grows by the LUKS header)",
                       field="image.root")
    cmdline = measured_cmdline(facts, options)
    if options.mode == "luks":
        protect = [f"encrypt the root partition with LUKS2 (argon2id {options.pbkdf_memory_kib} KiB, "
                   f"{options.pbkdf_iterations} iterations{', dm-integrity' if options.integrity else ''})",
                   "install the key-release agent, its config and the server's CA (no SSH host keys are copied)"]
    else:
        protect = ["make the root read-only with a dm-verity hash tree appended to its partition (SHA-256, "
                   "4 KiB blocks); its root hash goes on the measured cmdline",
                   "install the verity initrd scripts: /var /home /root /tmp on tmpfs, /etc an overlay (no SSH "
                   "host keys are copied)"]
    plan = [f"copy {options.source} ({facts.distro} {facts.release}, root {facts.root.device}) to a new image",
            *protect, f"regenerate the initrd of kernel {kernel.version}",
            f"write {options.output} and the staging dir {options.staging_dir} (cmdline: {cmdline})"]
    return kernel, Result(changed=True, output=options.output, staging_dir=options.staging_dir, plan=plan,
                          kernel_version=kernel.version, cmdline=cmdline, image=facts.to_json())


def _virtual_size(path: str, run: Runner) -> int:
    rc, out, err = run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", path], QEMU_IMG_TIMEOUT)
    try:
        if rc != 0:
            raise ValueError((err or out).strip())
        return int(json.loads(out)["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SnpError(f"qemu-img info cannot read it: {exc}", field="source", path=path) from None


def output_size(options: ConvertOptions, disk_size: int) -> int:
    """The new disk's size: the stock disk's plus the room its mode needs (for verity, a bound: the
    tree of the whole disk, more than the root partition's)."""
    return disk_size + disk_growth(options, disk_size)


def _build(handle: Any, options: ConvertOptions, facts: ImageFacts, kernel: Kernel, debs: Callable[[], list[str]],
           key: bytearray, disk_size: int, staging_tmp: str, say: Progress) -> dict[str, Any]:
    """The new image in the launched ``handle``: the source (read-only) and the new disk of ``disk_size`` bytes,
    found by their labels. ``debs`` gives the packages to install (it may wait for their download)."""
    root_number = facts.root.number
    src, dst = kernel_devices(handle, "source", "target")
    api_dst = disk_devices(handle, "target")[0]
    src_root, dst_root = f"{src}{root_number}", f"{dst}{root_number}"
    say("partitioning the new image like the stock one")
    start = facts.root.start // 512
    # The root runs to the disk's last usable sector (before the backup GPT), rounded down to
    # whole 4 KiB sectors: the LUKS2 data segment and dm-verity use 4096-byte blocks.
    last_usable = disk_size // 512 - 34
    end = start + (last_usable - start + 1) // 8 * 8 - 1
    # One write of the whole table (sfdisk), not a series of edits: udev probes the disk after each
    # write, and a probe between two edits once read a half-written table ("CRC mismatch").
    dump = shell(handle, "read the stock partition table", f"sfdisk --dump {src}")
    table = gpt_script(dump, root_number, start, end, dst)
    shell(handle, "partition the new image", f"cat > /tmp/gpt.sfdisk <<'SNPGUARD_GPT'\n{table}SNPGUARD_GPT\n"
          f"udevadm settle\nsfdisk -q {dst} < /tmp/gpt.sfdisk\nudevadm settle\n"
          f"test -b {dst_root}")
    for part in facts.partitions:
        if part is facts.root:
            continue
        say(f"copying partition {part.number} ({part.fs_type or 'raw'}, {part.size >> 20} MiB)")
        shell(handle, f"copy partition {part.number}",
              f"dd if={src}{part.number} of={dst}{part.number} bs=4M conv=fsync status=none")
    label = f"-L {_shell_word(facts.root.label)} " if facts.root.label else ""
    if options.mode == "luks":
        luks_uuid = _luks_format(handle, options, key, dst_root, say)
        fs_device, fs_blocks = "/dev/mapper/snpguard-new", ""
    else:
        luks_uuid = ""
        fs_device, fs_blocks = dst_root, str(verity_data_blocks(facts))
    shell(handle, "make the root file system",
          f"mkfs.ext4 -q -b {VERITY_BLOCK} -U {facts.root.uuid} {label}{fs_device} {fs_blocks}")
    sizes = shell(handle, "measure the root file system", "\n".join([
        "mkdir -p /tmp/src /tmp/dst",
        f"mount -o ro {src_root} /tmp/src",
        f"mount {fs_device} /tmp/dst",
        "cd /tmp/src && for e in * .[!.]*; do [ -e \"$e\" ] || [ -L \"$e\" ] || continue; "
        "printf '%s\\t%s\\n' \"$(du -sxb -- \"$e\" | cut -f1)\" \"$e\"; done"]))
    entries = [line.split("\t", 1) for line in sizes.splitlines() if "\t" in line]
    total = sum(int(entry[0]) for entry in entries) or 1
    done = 0
    for size, entry in entries:
        done += int(size)
        shell(handle, f"copy /{entry}", f"cp -a -- /tmp/src/{_shell_word(entry)} /tmp/dst/")
        say(f"copy: /{entry} ({done >> 20} of {total >> 20} MiB, {100 * done // total}%)")
    # Per-instance secrets must not be cloned into every VM made from this image: each one
    # makes its own SSH host keys at first boot (sshd-keygen / cloud-init), as stock images do.
    removed = shell(handle, "remove SSH host keys", "for k in /tmp/dst/etc/ssh/ssh_host_*; do "
                    "[ -e \"$k\" ] || continue; rm -f -- \"$k\"; echo \"${k#/tmp/dst}\"; done")
    if removed.strip():
        say(f"removed SSH host keys copied from the stock image: {' '.join(removed.split())}")
    shell(handle, "finish the copy", "sync\numount /tmp/src\numount /tmp/dst")
    call("mount the new root", handle.mount,
         fs_device if options.mode == "luks" else f"{api_dst}{root_number}", "/")
    esp = next((p for p in facts.partitions if p.gpt_type.upper() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
               None)
    if esp is not None and handle.is_dir("/boot/efi"):
        call("mount the ESP", handle.mount, f"{api_dst}{esp.number}", "/boot/efi")
    packages = debs()
    if packages:
        say(f"installing {len(packages)} packages offline: "
            f"{', '.join(os.path.basename(d) for d in packages)}")
        call("package dir", handle.mkdir_p, "/var/cache/snpguard-debs")
        names = []
        for deb in packages:
            name = os.path.basename(deb)
            call(f"upload {name}", handle.upload, deb, f"/var/cache/snpguard-debs/{name}")
            names.append(f"/var/cache/snpguard-debs/{name}")
        call("dpkg -i", handle.command, ["dpkg", "-i", *names])
        call("remove the package files", handle.rm_rf, "/var/cache/snpguard-debs")
    say("installing the agent" if options.mode == "luks" else "installing the verity initrd scripts")
    for item in _payload(options, luks_uuid):
        parent = os.path.dirname(item.dest)
        call(f"mkdir {parent}", handle.mkdir_p, parent)
        call(f"write {item.dest}", handle.write, item.dest, item.data)
        call(f"chmod {item.dest}", handle.chmod, item.mode, item.dest)
    if options.mode == "verity":
        from ..agent.verity import REPORT_UNIT, REPORT_WANTS
        call("mkdir multi-user.target.wants", handle.mkdir_p, os.path.dirname(REPORT_WANTS))
        call("enable the boot report", handle.ln_sf, REPORT_UNIT, REPORT_WANTS)
    if options.mode == "luks":
        crypttab = _crypttab(handle, luks_uuid)
        call("write /etc/crypttab", handle.write, "/etc/crypttab", crypttab.encode())
    else:
        fstab = _verity_fstab(call("read /etc/fstab", handle.read_file, "/etc/fstab").decode())
        call("write /etc/fstab", handle.write, "/etc/fstab", fstab.encode())
    say(f"regenerating the initrd of {kernel.version} with {facts.init_system} (inside the image)")
    initrd = kernel.initrd or f"/boot/initrd.img-{kernel.version}"
    # The generator's scratch tree (thousands of small files, then the archive) lives in the appliance's
    # memory, not on the new root: every block written there is encrypted by an emulated CPU, and
    # nothing of it is left in the image. Both generators work under /var/tmp.
    shell(handle, "scratch space for the initrd generator",
          f"mkdir -p {SYSROOT}/var/tmp\nmount -t tmpfs -o size=1g,mode=1777 snpguard-scratch {SYSROOT}/var/tmp")
    call(facts.init_system, handle.command, initrd_command(facts, options.mode, kernel.version, initrd))
    shell(handle, "release the scratch space", f"umount {SYSROOT}/var/tmp")
    call("download the kernel", handle.download, kernel.vmlinuz, os.path.join(staging_tmp, stg.KERNEL))
    call("download the initrd", handle.download, initrd, os.path.join(staging_tmp, stg.INITRD))
    call("unmount", handle.umount_all)
    if options.mode == "verity":
        return _verity_format(handle, facts, dst_root, say)
    shell(handle, "close the LUKS2 container", "cryptsetup close snpguard-new\nsync")
    return {"uuid": luks_uuid, "device_partition": root_number, "pbkdf": "argon2id",
            "pbkdf_memory_kib": options.pbkdf_memory_kib, "pbkdf_iterations": options.pbkdf_iterations,
            "cipher": "aes-xts-plain64", "key_size": 512, "sector_size": 4096, "integrity": options.integrity,
            "mapper": MAPPER}


def initrd_command(facts: ImageFacts, mode: str, version: str, initrd: str) -> list[str]:
    """The image's own initrd generator, run inside it.

    dracut runs ``--no-hostonly`` (in the appliance, host-only would describe the appliance's hardware, not
    the VM's) and ``--add``s our module by name, so a module whose check fails stops the build instead of
    silently leaving the agent out.
    """
    if facts.init_system == "dracut":
        module = "snpguard-agent" if mode == "luks" else "snpguard-verity"
        return ["dracut", "--force", "--no-hostonly", "--add", module, initrd, version]
    return ["update-initramfs", "-u", "-k", version]


def _luks_format(handle: Any, options: ConvertOptions, key: bytearray, dst_root: str, say: Progress) -> str:
    """The LUKS2 container on the new root partition, opened as snpguard-new; returns its UUID."""
    say("creating the LUKS2 container (argon2id)")
    integrity = "--integrity hmac-sha256 " if options.integrity else ""
    secret = key.decode("ascii")
    shell(handle, "luksFormat",
          "cryptsetup luksFormat -q --type luks2 --cipher aes-xts-plain64 --key-size 512 --hash sha256 "
          f"--pbkdf argon2id --pbkdf-memory {options.pbkdf_memory_kib} --pbkdf-parallel 1 "
          f"--pbkdf-force-iterations {options.pbkdf_iterations} --sector-size 4096 {integrity}"
          f"--label cvm-root --key-file=- {dst_root}", secret=secret)
    shell(handle, "open the LUKS2 container", f"cryptsetup open --key-file=- {dst_root} snpguard-new",
          secret=secret)
    del secret
    return shell(handle, "LUKS UUID", f"cryptsetup luksUUID {dst_root}").splitlines()[-1].strip()


def _verity_format(handle: Any, facts: ImageFacts, dst_root: str, say: Progress) -> dict[str, Any]:
    """The hash tree appended after the (unmounted, final) file system; its root hash is measured."""
    data_blocks = verity_data_blocks(facts)
    offset = data_blocks * VERITY_BLOCK
    say(f"hashing the root for dm-verity ({offset >> 20} MiB, SHA-256)")
    out = shell(handle, "veritysetup format",
                f"sync\nveritysetup format --hash=sha256 --data-block-size={VERITY_BLOCK} "
                f"--hash-block-size={VERITY_BLOCK} --data-blocks={data_blocks} --hash-offset={offset} "
                f"{dst_root} {dst_root}")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    root_hash = fields.get("Root hash", "").strip()
    if len(root_hash) != 64:
        raise SnpError(f"veritysetup printed no root hash: {out[-500:]}", field="verity")
    return {"root_hash": root_hash, "hash_algorithm": "sha256", "data_block_size": VERITY_BLOCK,
            "hash_block_size": VERITY_BLOCK, "data_blocks": data_blocks, "hash_offset": offset,
            "salt": fields.get("Salt", "").strip(), "uuid": fields.get("UUID", "").strip(),
            "partuuid": facts.root.gpt_guid.lower(), "device_partition": facts.root.number, "mapper": MAPPER}


def _verity_fstab(current: str) -> str:
    """The root entry on the verity mapper, read-only and never fsck'ed (nothing could write a repair)."""
    lines = []
    for line in current.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.lstrip().startswith("#") and fields[1] == "/":
            line = f"/dev/mapper/{MAPPER} / {fields[2]} ro 0 0"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _crypttab(handle: Any, luks_uuid: str) -> str:
    """The stock crypttab plus the root line.

    ``initramfs`` makes cryptsetup-initramfs put dm-crypt and the cipher's kernel modules into
    the initrd even though, in the appliance, the root is not mounted from this entry; at boot
    its cryptroot runs after the agent, finds /dev/mapper/root open and never prompts.
    """
    current = handle.read_file("/etc/crypttab").decode() if handle.is_file("/etc/crypttab") else ""
    lines = [line for line in current.splitlines() if line.split()[:1] != [MAPPER]]
    lines.append(f"{MAPPER} UUID={luks_uuid} none luks,initramfs")
    return "\n".join(lines) + "\n"


def gpt_script(dump: str, root_number: int, start: int, end: int, disk: str = "/dev/sdb") -> str:
    """``sfdisk --dump`` of the stock disk as the table of ``disk``: every partition as it was (type, GUID,
    name, attributes), the root ``root_number`` from ``start`` to ``end`` (sectors, inclusive), the disk's
    own GUID kept and its last LBA left to sfdisk (the new disk is larger)."""
    header: list[str] = []
    parts: list[str] = []
    seen_root = False
    for line in dump.splitlines():
        line = line.strip()
        if not line:
            continue
        device, sep, spec = line.partition(" : ")
        if sep:
            number = int(re.sub(r"^.*?(\d+)$", r"\1", device))
            if number == root_number:
                seen_root = True
                given = re.match(r"start=\s*(\d+),\s*size=\s*\d+", spec)
                if given is None or int(given.group(1)) != start:
                    raise SnpError(f"the stock table does not put partition {root_number} at sector {start}",
                                   field="image.root")
                spec = re.sub(r"size=\s*\d+", f"size={end - start + 1}", spec, count=1)
            parts.append(f"{disk}{number} : {spec}")
        elif not line.startswith(("device:", "last-lba:")):
            header.append(line)
    if not any(line == "label: gpt" for line in header):
        raise SnpError("the stock disk's partition table is not GPT", field="image.partition_table")
    if not seen_root:
        raise SnpError(f"partition {root_number} is not in the stock partition table", field="image.root")
    return "\n".join(header) + "\n\n" + "\n".join(parts) + "\n"


def _shell_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
