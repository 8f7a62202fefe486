# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The dracut side of the agent: /usr/lib/dracut/modules.d/90snpguard-agent/.

dracut builds a systemd initrd wherever systemd is installed (every cloud image), so the
agent runs there as a unit, not as an initqueue hook:

* ``module-setup.sh`` installs the same closure as the initramfs-tools hook (python3, the
  agent's stdlib modules, the agent tree, ``_cffi_backend``, cryptsetup, /etc/snpguard/*,
  the kernel modules) and imports the agent in the initrd's layout, so a missing module
  fails the build, not a boot.  It depends on ``network`` (systemd-networkd in the initrd,
  DHCP on every interface) and ``dm`` (the udev rules that make /dev/mapper/<name> a
  device systemd waits for), and writes ``/etc/cmdline.d/90snpguard-agent.conf``:
  ``rd.neednet=1`` (bring the network up) and ``rd.shell=0 rd.emergency=poweroff`` (a boot
  that fails never reaches dracut's emergency shell).  That file is in the measured initrd.
* ``snpguard-agent.service`` runs ``snpguard-agent.sh`` after network-online.target and
  before the root is mounted (``initrd-root-device.target``, ``sysroot.mount``); it has
  ``FailureAction=poweroff-force``.  The root device's job waits for it without a time
  limit (a drop-in for ``dev-mapper-<name>.device``): the agent's own retries bound the wait,
  and it either opens the root or powers the VM off.
* ``snpguard-agent.sh`` loads the guest's report drivers, mounts configfs, runs the agent
  and on any failure prints why and powers off (sysrq, like the initramfs-tools scripts).

The converter puts ``rd.luks=0`` on the measured command line of a dracut image, so that
systemd-cryptsetup in the initrd never asks for a passphrase beside the agent.
"""

from __future__ import annotations

from .initramfs_tools import COPY_PYTHON

MODULE_DIR = "/usr/lib/dracut/modules.d/90snpguard-agent"

MODULE_SETUP = r"""#!/bin/bash
# snpguard-agent dracut module (written by snpguard.cvm; do not edit).
check() {
    require_binaries cryptsetup "$systemdutildir"/systemd || return 1
    [ -r @CONFIG@ ] && [ -d @AGENT_DIR@ ] || return 1
    return 0
}

depends() {
    echo systemd network dm
    return 0
}

installkernel() {
    hostonly='' instmods sev-guest tsm configfs dm_mod dm_crypt dm_integrity virtio_console \
        xts aes_generic aesni_intel sha256_generic
}

install() {
    AGENT=@AGENT_DIR@
    DEST=$initdir
    snpguard_fail() { derror "snpguard-agent: $*"; exit 1; }
    copy_plain() { inst_simple "$1" "$2" || snpguard_fail "cannot copy $1"; }
    copy_many() { inst_multiple "$@" || snpguard_fail "cannot copy the Python modules"; }
    # dracut-install resolves the libraries of executables only: Python's extension modules are 0644.
    # shellcheck disable=SC2046
    copy_elves() { inst_multiple "$@" $(snpguard_libs "$@") || snpguard_fail "cannot copy $* or their libraries"; }
@COPY_PYTHON@
    snpguard_copy_python
    copy_plain @CONFIG@ @CONFIG@
    [ -r @CA@ ] && copy_plain @CA@ @CA@
    inst_multiple modprobe mount sync || snpguard_fail "cannot copy modprobe, mount or sync"
    inst_script "$moddir/snpguard-agent.sh" @AGENT_DIR@/snpguard-agent.sh || snpguard_fail "cannot copy the hook"
    inst_simple "$moddir/snpguard-agent.service" "$systemdsystemunitdir/snpguard-agent.service" \
        || snpguard_fail "cannot copy the unit"
    $SYSTEMCTL -q --root "$initdir" enable snpguard-agent.service || snpguard_fail "cannot enable the unit"
    mkdir -p "$initdir$systemdsystemunitdir/@DEVICE_UNIT@.d"
    printf '[Unit]\nJobRunningTimeoutSec=infinity\n' > "$initdir$systemdsystemunitdir/@DEVICE_UNIT@.d/snpguard.conf"
    mkdir -p "$initdir/etc/cmdline.d"
    echo "rd.neednet=1 rd.shell=0 rd.emergency=poweroff" > "$initdir/etc/cmdline.d/90snpguard-agent.conf"
}
"""

UNIT = r"""[Unit]
# snpguard-agent (written by snpguard.cvm; do not edit)
Description=snpguard: attest to the key-release server and unlock the root
DefaultDependencies=no
ConditionPathExists=/etc/initrd-release
Wants=network-online.target
After=network-online.target systemd-networkd-wait-online.service systemd-udevd.service systemd-modules-load.service
Before=initrd-root-device.target sysroot.mount cryptsetup.target
FailureAction=poweroff-force

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=@AGENT_DIR@/snpguard-agent.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=initrd.target
"""

HOOK = r"""#!/bin/sh
# snpguard-agent: attest, receive the LUKS key, open the root (written by snpguard.cvm; do not edit).
@POWER_OFF@
[ -b /dev/mapper/@MAPPER@ ] && exit 0
for module in sev-guest tsm dm_crypt; do modprobe -q "$module" 2>/dev/null || true; done
configfs=
while read -r _dev mnt _rest; do [ "$mnt" = /sys/kernel/config ] && configfs=mounted; done < /proc/mounts
if [ -d /sys/kernel/config ] && [ -z "$configfs" ]; then
    mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
fi
/usr/bin/python3 -I -S -B @AGENT_DIR@/snpguard-agent.py --config @CONFIG@
status=$?
if [ "$status" -ne 0 ]; then
    echo "snpguard-agent: the root stays locked (agent status $status)"
    echo "snpguard-agent: stopping this boot: no root file system, no shell; powering off"
    snpguard_power_off
fi
exit 0
"""


def device_unit(mapper: str) -> str:
    """systemd's unit name for /dev/mapper/<mapper> (``-`` escaped as in ``systemd-escape --path``)."""
    return "dev-mapper-" + "".join(c if c.isalnum() or c in ":_." else f"\\x{ord(c):02x}" for c in mapper) + ".device"


__all__ = ["COPY_PYTHON", "HOOK", "MODULE_DIR", "MODULE_SETUP", "UNIT", "device_unit"]
