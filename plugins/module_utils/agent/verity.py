# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The initramfs-tools side of ``mode: verity``: a read-only root checked block by block.

No key is released at boot in this mode (the root holds nothing secret; a runtime
attestation gates secrets later).  What the initrd does instead:

* ``scripts/local-top/snpguard-verity`` reads ``snpguard.verity.roothash=``,
  ``snpguard.verity.data=`` (``PARTUUID=…``) and ``snpguard.verity.hashoffset=`` from the
  measured kernel command line, waits for the partition (``snpguard.verity.wait=`` seconds, default
  60) and opens it with ``veritysetup
  open`` as /dev/mapper/root: the hash tree is appended to the same partition, after the
  file system.  Any block whose hash does not lead to the measured root hash then fails to
  read.  Opening does not compare the tree with the root hash, so the script reads the first
  block at once: a tree that is not the measured one stops the boot there, by name.  A missing
  or malformed parameter, a failed open or that failed read powers the VM off.
* ``scripts/init-bottom/snpguard-verity`` makes the running system writable where it must
  be, without touching the root: /var, /home and /root become tmpfs copies of the image's
  (populated here, before systemd starts), /tmp an empty tmpfs, and /etc an overlay whose
  upper layer is tmpfs.  Nothing written at run time survives a reboot.
* ``hooks/snpguard-verity`` adds veritysetup, coreutils' ``cp`` and ``dd`` and util-linux'
  ``mount`` (klibc's do not copy trees, read past the page cache or mount overlays) and the
  dm-verity and overlay modules.
* the agent's panic script (``initramfs_tools.PANIC``) powers off instead of a rescue shell.

dracut images get the same two scripts as units of a dracut module (``90snpguard-verity``):
``snpguard-verity-open.service`` before the root device is waited for, and
``snpguard-verity-layers.service`` (``rootmnt=/sysroot``) after /sysroot is mounted and before
initrd-parse-etc reads its fstab; both ``FailureAction=poweroff-force``, and the measured
initrd's ``/etc/cmdline.d`` says ``rd.shell=0 rd.emergency=poweroff``.

In the running system ``snpguard-boot-report.service`` (``boot_report.py`` and the stdlib-only
modules it imports, under /usr/lib/snpguard/report) asks for a report that binds the SSH host
key made at this boot, for a runtime attestation to pin.
"""

from __future__ import annotations

from .initramfs_tools import PANIC, PANIC_PATH, fill_common

HOOK_PATH = "/etc/initramfs-tools/hooks/snpguard-verity"
LOCAL_TOP_PATH = "/etc/initramfs-tools/scripts/local-top/snpguard-verity"
INIT_BOTTOM_PATH = "/etc/initramfs-tools/scripts/init-bottom/snpguard-verity"
TOOLS_DIR = "/usr/lib/snpguard/bin"
#: The measured command-line parameters (their values are checked by the local-top script).
ROOT_HASH, DATA_DEVICE, HASH_OFFSET = "snpguard.verity.roothash", "snpguard.verity.data", "snpguard.verity.hashoffset"
#: Optional: how long (whole seconds, default 60) to wait for the data partition to appear.
WAIT = "snpguard.verity.wait"
WRITABLE_COPIES = ("var", "home", "root")
REPORT_DIR = "/usr/lib/snpguard/report"
REPORT_ENTRY = "plugins/module_utils/agent/boot_report.py"
REPORT_UNIT = "/etc/systemd/system/snpguard-boot-report.service"
REPORT_WANTS = "/etc/systemd/system/multi-user.target.wants/snpguard-boot-report.service"

UNIT = """[Unit]
Description=snpguard: an SEV-SNP report binding this boot's SSH host key
After=cloud-init.service ssh.service sshd-keygen.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -I -S -B @REPORT_DIR@/snpguard-boot-report.py --source @SOURCE@
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

REPORT_SCRIPT = """#!/usr/bin/python3 -I -S -B
\"\"\"snpguard-boot-report: a report binding the SSH host key (written by snpguard.cvm; do not edit).\"\"\"
import sys

sys.path[:0] = ["@REPORT_DIR@"]
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import main  # noqa: E402

sys.exit(main())
"""

HOOK = r"""#!/bin/sh
# snpguard-verity: what a dm-verity root needs in the initrd (written by snpguard.cvm; do not edit).
@PREREQS@

. /usr/share/initramfs-tools/hook-functions

fail() { echo "E: snpguard-verity: $*" >&2; exit 1; }
VERITYSETUP=$(command -v veritysetup || echo /usr/sbin/veritysetup)
[ -x "$VERITYSETUP" ] || fail "veritysetup is not installed in the image (cryptsetup-bin)"
copy_exec "$VERITYSETUP" /usr/sbin/veritysetup || fail "cannot copy veritysetup"
copy_exec "$(command -v cp)" @TOOLS@/cp || fail "cannot copy cp"
copy_exec "$(command -v mount)" @TOOLS@/mount || fail "cannot copy mount"
copy_exec "$(command -v dd)" @TOOLS@/dd || fail "cannot copy dd"
for module in dm_mod dm_verity overlay; do
    manual_add_modules "$module" || fail "no kernel module $module"
done
exit 0
"""

LOCAL_TOP = r"""#!/bin/sh
# snpguard-verity: open the root as dm-verity with the measured root hash (written by snpguard.cvm; do not edit).
@PREREQS@

@POWER_OFF@
stop() {
    echo "snpguard-verity: $*"
    echo "snpguard-verity: stopping this boot: no root file system, no shell; powering off"
    snpguard_power_off
}

[ -b /dev/mapper/root ] && exit 0
roothash= data= offset= wait=60
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    @ROOT_HASH@=*) roothash=${arg#*=} ;;
    @DATA_DEVICE@=PARTUUID=*) data=${arg#*=PARTUUID=} ;;
    @HASH_OFFSET@=*) offset=${arg#*=} ;;
    @WAIT@=*) wait=${arg#*=} ;;
    esac
done
case "$roothash" in
*[!0-9a-f]* | "") stop "no valid @ROOT_HASH@= on the kernel command line" ;;
esac
[ "${#roothash}" -eq 64 ] || stop "@ROOT_HASH@= must be 64 hex digits (SHA-256)"
case "$data" in
*[!0-9a-f-]* | "") stop "no valid @DATA_DEVICE@=PARTUUID=... on the kernel command line" ;;
esac
case "$offset" in
*[!0-9]* | "") stop "no valid @HASH_OFFSET@= on the kernel command line" ;;
esac
case "$wait" in
*[!0-9]* | "") stop "@WAIT@= must be whole seconds" ;;
esac
modprobe -q dm_verity 2>/dev/null || true
device=/dev/disk/by-partuuid/$data
tries=0
while [ ! -b "$device" ] && [ "$tries" -lt $((wait * 10)) ]; do
    sleep 0.1
    tries=$((tries + 1))
done
[ -b "$device" ] || stop "the root partition PARTUUID=$data did not appear within $wait s"
if ! /usr/sbin/veritysetup open --hash-offset="$offset" "$device" root "$device" "$roothash"; then
    stop "veritysetup refused $device with the measured root hash"
fi
# Activation does not check the tree against the root hash: the first read does.  Read one block
# past the page cache, so a root hash that is not this tree's stops the boot here, named.
if ! @TOOLS@/dd if=/dev/mapper/root of=/dev/null bs=4096 count=1 iflag=direct status=none; then
    /usr/sbin/veritysetup close root 2>/dev/null
    stop "the hash tree on $device does not match the measured root hash ${roothash} (first block unreadable)"
fi
echo "snpguard-verity: $device opened as /dev/mapper/root (dm-verity, root hash ${roothash})"
exit 0
"""

INIT_BOTTOM = r"""#!/bin/sh
# snpguard-verity: writable /var /home /root /tmp and /etc over the read-only root (written by snpguard.cvm).
@PREREQS@

@POWER_OFF@
stop() {
    echo "snpguard-verity: $*; powering off"
    snpguard_power_off
}

MOUNT=@TOOLS@/mount
RW=/run/snpguard-rw
root=${rootmnt:?}
# The root must be the verity mapper, mounted read-only (as /proc/mounts says, not as asked).
seen=
while read -r dev mnt fstype opts rest; do
    [ "$mnt" = "$root" ] && seen="$dev $fstype $opts"
done < /proc/mounts
case "$seen" in
"/dev/mapper/root "*" ro,"* | "/dev/mapper/root "*" ro") ;;
*) stop "the root is not /dev/mapper/root mounted read-only (${seen:-not mounted})" ;;
esac
echo "snpguard-verity: root ${seen%% *} mounted ${seen##* }"
mkdir -p "$RW" && $MOUNT -t tmpfs -o mode=0755,nosuid,nodev snpguard-rw "$RW" || stop "cannot mount $RW"
for dir in @WRITABLE_COPIES@; do
    [ -d "$root/$dir" ] || continue
    @TOOLS@/cp -a "$root/$dir" "$RW/" || stop "cannot copy /$dir to tmpfs"
    $MOUNT --bind "$RW/$dir" "$root/$dir" || stop "cannot mount the writable /$dir"
done
$MOUNT -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp" || stop "cannot mount /tmp"
mkdir -p "$RW/etc/upper" "$RW/etc/work"
$MOUNT -t overlay snpguard-etc -o "lowerdir=$root/etc,upperdir=$RW/etc/upper,workdir=$RW/etc/work" "$root/etc" \
    || stop "cannot mount the /etc overlay"
echo "snpguard-verity: root read-only; /var /home /root /tmp on tmpfs, /etc an overlay (nothing written persists)"
exit 0
"""


#: The same two scripts in dracut's systemd initrd, as units: the open before the root is mounted,
#: the writable layers after /sysroot is mounted and before the root file systems count as ready.
DRACUT_DIR = "/usr/lib/dracut/modules.d/90snpguard-verity"
DRACUT_SCRIPTS = "/usr/lib/snpguard/verity"

DRACUT_SETUP = r"""#!/bin/bash
# snpguard-verity dracut module (written by snpguard.cvm; do not edit).
check() {
    require_binaries veritysetup "$systemdutildir"/systemd || return 1
    return 0
}

depends() {
    echo systemd dm
    return 0
}

installkernel() {
    hostonly='' instmods dm_mod dm_verity overlay
}

install() {
    fail() { derror "snpguard-verity: $*"; exit 1; }
    inst_binary "$(command -v veritysetup)" /usr/sbin/veritysetup || fail "cannot copy veritysetup"
    inst_binary "$(command -v cp)" @TOOLS@/cp || fail "cannot copy cp"
    inst_binary "$(command -v mount)" @TOOLS@/mount || fail "cannot copy mount"
    inst_binary "$(command -v dd)" @TOOLS@/dd || fail "cannot copy dd"
    inst_multiple cat sleep modprobe sync || fail "cannot copy cat, sleep, modprobe or sync"
    inst_script "$moddir/open.sh" @DRACUT_SCRIPTS@/open.sh || fail "cannot copy open.sh"
    inst_script "$moddir/layers.sh" @DRACUT_SCRIPTS@/layers.sh || fail "cannot copy layers.sh"
    for unit in snpguard-verity-open.service snpguard-verity-layers.service; do
        inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit" || fail "cannot copy $unit"
        $SYSTEMCTL -q --root "$initdir" enable "$unit" || fail "cannot enable $unit"
    done
    dropin="$initdir$systemdsystemunitdir/dev-mapper-root.device.d"
    mkdir -p "$dropin" && printf '[Unit]\nJobRunningTimeoutSec=infinity\n' > "$dropin/snpguard.conf"
    mkdir -p "$initdir/etc/cmdline.d"
    echo "rd.shell=0 rd.emergency=poweroff" > "$initdir/etc/cmdline.d/90snpguard-verity.conf"
}
"""

DRACUT_OPEN_UNIT = """[Unit]
# snpguard-verity (written by snpguard.cvm; do not edit)
Description=snpguard: open the root as dm-verity with the measured root hash
DefaultDependencies=no
ConditionPathExists=/etc/initrd-release
After=systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service
Before=initrd-root-device.target sysroot.mount
FailureAction=poweroff-force

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=@DRACUT_SCRIPTS@/open.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=initrd.target
"""

DRACUT_LAYERS_UNIT = """[Unit]
# snpguard-verity (written by snpguard.cvm; do not edit)
Description=snpguard: writable /var /home /root /tmp and /etc over the read-only root
DefaultDependencies=no
ConditionPathExists=/etc/initrd-release
Requires=sysroot.mount
After=sysroot.mount
Before=initrd-root-fs.target initrd-parse-etc.service
FailureAction=poweroff-force

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=rootmnt=/sysroot
ExecStart=@DRACUT_SCRIPTS@/layers.sh
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=initrd-root-fs.target
"""


def _fill(template: str) -> str:
    return (fill_common(template).replace("@TOOLS@", TOOLS_DIR).replace("@ROOT_HASH@", ROOT_HASH)
            .replace("@DATA_DEVICE@", DATA_DEVICE).replace("@HASH_OFFSET@", HASH_OFFSET).replace("@WAIT@", WAIT)
            .replace("@WRITABLE_COPIES@", " ".join(WRITABLE_COPIES)).replace("@DRACUT_SCRIPTS@", DRACUT_SCRIPTS))


def verity_scripts() -> list[tuple[str, bytes, int]]:
    """(path in the image, content, mode) of the hook and boot scripts, sorted by path."""
    files = [(HOOK_PATH, _fill(HOOK).encode(), 0o755), (LOCAL_TOP_PATH, _fill(LOCAL_TOP).encode(), 0o755),
             (INIT_BOTTOM_PATH, _fill(INIT_BOTTOM).encode(), 0o755), (PANIC_PATH, fill_common(PANIC).encode(), 0o755),
             (f"{DRACUT_DIR}/module-setup.sh", _fill(DRACUT_SETUP).encode(), 0o755),
             (f"{DRACUT_DIR}/open.sh", _fill(LOCAL_TOP).encode(), 0o755),
             (f"{DRACUT_DIR}/layers.sh", _fill(INIT_BOTTOM).encode(), 0o755),
             (f"{DRACUT_DIR}/snpguard-verity-open.service", _fill(DRACUT_OPEN_UNIT).encode(), 0o644),
             (f"{DRACUT_DIR}/snpguard-verity-layers.service", _fill(DRACUT_LAYERS_UNIT).encode(), 0o644)]
    return sorted(files)


def boot_report_files(report_source: str) -> list[tuple[str, bytes, int]]:
    """The boot report's program (its stdlib-only import closure), entry script and systemd unit."""
    from .payload import PACKAGE, agent_modules, read_collection_file

    collection = f"{REPORT_DIR}/{PACKAGE.replace('.', '/')}"
    files = []
    for rel in agent_modules(entry=REPORT_ENTRY):
        files.append((f"{collection}/{rel}", read_collection_file(rel), 0o644))
    for package in ("ansible_collections", "ansible_collections/snpguard", "ansible_collections/snpguard/cvm"):
        files.append((f"{REPORT_DIR}/{package}/__init__.py", b"", 0o644))
    files.append((f"{REPORT_DIR}/snpguard-boot-report.py", REPORT_SCRIPT.replace("@REPORT_DIR@", REPORT_DIR).encode(),
                  0o755))
    files.append((REPORT_UNIT, UNIT.replace("@REPORT_DIR@", REPORT_DIR).replace("@SOURCE@", report_source).encode(),
                  0o644))
    return sorted(files)


def verity_cmdline(root_hash: str, partuuid: str, hash_offset: int) -> list[str]:
    """The measured parameters the local-top script reads."""
    return [f"{ROOT_HASH}={root_hash}", f"{DATA_DEVICE}=PARTUUID={partuuid.lower()}", f"{HASH_OFFSET}={hash_offset}"]
