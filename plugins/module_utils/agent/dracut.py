# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The dracut side of the agent: /usr/lib/dracut/modules.d/90snpguard-agent/.

``module-setup.sh`` installs the same closure as the initramfs-tools hook (python3, the
agent's stdlib modules, the agent tree, ``_cffi_backend``, cryptsetup, /etc/snpguard/*)
and ``/etc/cmdline.d/90snpguard-agent.conf`` (``rd.neednet=1``, plus ``ip=dhcp`` unless the
converter gives an ``ip=`` of its own), so networking comes up in the initrd; the file
is part of the measured initrd.  ``snpguard-agent.sh`` is an ``initqueue/settled`` hook:
it runs the agent once the network is online and, on failure, powers off (dracut's
emergency shell is never reached with key material).

For dracut the root's crypttab entry should carry ``noauto`` (or the image ``rd.luks=0``):
systemd-cryptsetup would otherwise race the agent and prompt for a passphrase.
(Not booted by the tests yet; the initramfs-tools path is.)
"""

from __future__ import annotations

from .initramfs_tools import COPY_PYTHON

MODULE_DIR = "/usr/lib/dracut/modules.d/90snpguard-agent"

MODULE_SETUP = r"""#!/bin/bash
# snpguard-agent dracut module (written by snpguard.cvm; do not edit).
check() {
    [ -r @CONFIG@ ] && [ -d @AGENT_DIR@ ] && require_binaries cryptsetup || return 1
    return 0
}

depends() {
    echo network crypt
}

installkernel() {
    instmods sev-guest tsm configfs dm_mod dm_crypt dm_integrity virtio_console
    instmods =drivers/net
}

install() {
    AGENT=@AGENT_DIR@
    DEST=$initdir
    snpguard_fail() { derror "snpguard-agent: $*"; exit 1; }
    copy_bin() {
        if [ -n "${2-}" ]; then inst_binary "$1" "$2"; else inst_binary "$1"; fi || snpguard_fail "cannot copy $1"
    }
    copy_plain() { inst_simple "$1" "$2" || snpguard_fail "cannot copy $1"; }
@COPY_PYTHON@
    snpguard_copy_python
    inst_simple @CONFIG@
    [ -r @CA@ ] && inst_simple @CA@
    inst_multiple cryptsetup
    mkdir -p "$initdir/etc/cmdline.d"
    echo "rd.neednet=1 @IP@" > "$initdir/etc/cmdline.d/90snpguard-agent.conf"
    inst_hook initqueue/settled 90 "$moddir/snpguard-agent.sh"
}
"""

HOOK = r"""#!/bin/sh
# snpguard-agent: attest, receive the LUKS key, open the root (written by snpguard.cvm; do not edit).
[ -e /tmp/snpguard-agent.done ] && return 0 2>/dev/null
[ -b /dev/mapper/@MAPPER@ ] && { : > /tmp/snpguard-agent.done; return 0 2>/dev/null; }
# Wait for an interface dracut's network module brought up.
ls /tmp/net.*.did-setup >/dev/null 2>&1 || return 0 2>/dev/null
: > /tmp/snpguard-agent.done
for module in sev-guest tsm dm_crypt; do modprobe -q "$module" 2>/dev/null || true; done
if [ -d /sys/kernel/config ] && ! grep -q " /sys/kernel/config " /proc/mounts; then
    mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
fi
@POWER_OFF@
if ! /usr/bin/python3 -I -S -B @AGENT_DIR@/snpguard-agent.py --config @CONFIG@; then
    echo "snpguard-agent: the root stays locked; stopping this boot: no root, no shell; powering off" > /dev/console
    snpguard_power_off
fi
"""

__all__ = ["COPY_PYTHON", "HOOK", "MODULE_DIR", "MODULE_SETUP"]
