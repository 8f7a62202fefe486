# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The initramfs-tools side of the agent: a hook (what goes into the initrd) and two boot scripts.

* ``/etc/initramfs-tools/hooks/snpguard-agent`` copies python3, exactly the stdlib modules
  the agent imports (``payload.STDLIB_MODULES``, with their byte code and C extensions and
  the libraries ``ldd`` names for them), the agent tree, ``_cffi_backend`` of the image's
  Python (Debian's python3-cffi-backend: cryptography's Rust core needs it), cryptsetup, the
  kernel modules (sev-guest, tsm, dm-crypt, network drivers) and /etc/snpguard/*.  It then
  imports the agent in the initrd tree (chrooted), so a missing module or library fails
  ``mkinitramfs`` instead of a boot.
* ``scripts/local-top/snpguard-agent`` brings the network up (``configure_networking``,
  DHCP unless ``ip=`` says otherwise), runs the agent, and powers the VM off on any failure.
  cryptsetup-initramfs' ``cryptroot`` declares every other local-top script its prerequisite,
  so it runs after this one, finds /dev/mapper/<name> already set up and does not prompt:
  the root's crypttab entry (which makes mkinitramfs include dm-crypt and cryptroot) is kept.
* ``scripts/panic/snpguard-agent``: initramfs-tools' ``panic`` runs /scripts/panic before it
  starts its rescue shell (unless ``panic=`` is on the cmdline); this powers off first, so no
  shell ever sits next to an opened root in a confidential VM.
"""

from __future__ import annotations

#: Every hook and boot script starts so: initramfs-tools first asks each for its prerequisites.
PREREQS = r"""PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs) prereqs; exit 0 ;;
esac"""
#: How a boot script ends a boot that must not go on: no root, no shell, the VM powered off
#: (sysrq first: it needs nothing from the initrd; poweroff -f if sysrq is disabled).
POWER_OFF = r"""snpguard_power_off() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 10
    poweroff -f
    while :; do sleep 60; done
}"""


def fill_common(template: str) -> str:
    """The shared pieces of every hook and boot script (``@PREREQS@``, ``@POWER_OFF@``) put in."""
    return template.replace("@PREREQS@", PREREQS).replace("@POWER_OFF@", POWER_OFF)


HOOK_PATH = "/etc/initramfs-tools/hooks/snpguard-agent"
LOCAL_TOP_PATH = "/etc/initramfs-tools/scripts/local-top/snpguard-agent"
PANIC_PATH = "/etc/initramfs-tools/scripts/panic/snpguard-agent"

#: Shell functions both the initramfs-tools hook and the dracut module use to copy Python.
#: Needs: AGENT (the agent dir), DEST (the initrd root), snpguard_fail, and two copiers that each run
#: one process for all their files: ``copy_many FILE...`` (plain files) and ``copy_elves FILE...``
#: (executables and shared objects with the libraries ``ldd`` names), each file to the same path in
#: the initrd.  The converter runs this in an emulated appliance where a fork costs ~40 ms: a fork per
#: stdlib file and initramfs-tools' ``copy_exec`` per library (~30 forks each) once took two minutes.
#: The stdlib paths come precomputed (``@STDLIB_PATHS@``: ``email.utils`` as ``email/utils``).
COPY_PYTHON = r"""
snpguard_libs() {  # the libraries ldd names for each file, on one line (shell built-ins but ldd)
    libs=
    for elf in "$@"; do
        for word in $(ldd "$elf" 2>/dev/null); do
            case "$word" in /*) libs="$libs $word" ;; esac
        done
    done
    echo "$libs"
}

snpguard_copy_python() {
    PY=$(readlink -f /usr/bin/python3) || snpguard_fail "python3 is not installed in the image"
    [ -x "$PY" ] || snpguard_fail "python3 is not installed in the image"
    PYNAME=${PY##*/}
    VER=${PYNAME#python}
    TAG=${VER%%.*}${VER#*.}
    LIB=/usr/lib/$PYNAME
    files=
    for rel in @STDLIB_PATHS@; do
        if [ -f "$LIB/$rel/__init__.py" ]; then
            rel=$rel/__init__
        elif [ ! -f "$LIB/$rel.py" ]; then
            continue  # not in this Python (another minor version); the import check below decides
        fi
        files="$files $LIB/$rel.py"
        dir=${rel%/*}; [ "$dir" = "$rel" ] && dir= || dir=/$dir
        base=${rel##*/}
        pyc="$LIB$dir/__pycache__/$base.cpython-$TAG.pyc"
        [ -f "$pyc" ] && files="$files $pyc"
    done
    # shellcheck disable=SC2086 # (stdlib paths: no spaces)
    copy_many $files
    elves=$PY
    for ext in @STDLIB_EXTENSIONS@; do
        for so in "$LIB"/lib-dynload/"$ext".cpython-"$TAG"-*.so; do
            [ -f "$so" ] && elves="$elves $so"
        done
    done
    for so in "$AGENT"/cryptography/hazmat/bindings/*.so; do
        [ -f "$so" ] && elves="$elves $so"
    done
    cffi=
    for so in /usr/lib/python3/dist-packages/_cffi_backend.cpython-"$TAG"-*.so \
            "$AGENT"/_cffi_backend.cpython-"$TAG"-*.so; do
        [ -f "$so" ] && cffi=$so && break
    done
    [ -n "$cffi" ] || snpguard_fail "no _cffi_backend for $PYNAME (install python3-cffi-backend): cryptography needs it"
    # shellcheck disable=SC2086
    copy_elves $elves $cffi /usr/sbin/cryptsetup
    ln -sf "$PYNAME" "$DEST/usr/bin/python3"
    mkdir -p "$DEST$AGENT"
    cp -a "$AGENT/." "$DEST$AGENT/"
    [ "${cffi%/*}" = "$AGENT" ] || cp -L "$cffi" "$DEST$AGENT/" || snpguard_fail "cannot copy $cffi"
    "$PY" -I -S -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$DEST" -p / "$DEST$AGENT" >/dev/null \
        || snpguard_fail "cannot byte-compile the agent"
    # The agent must import with the initrd's own Python tree and libraries: inside the initrd tree
    # (chroot, as the initrd generators run in the converter), else with its Python tree (prefix $DEST/usr).
    check="import sys; sys.path[:0] = ['@ROOT@$AGENT']
import @IMPORT_CHECK@
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession
AgentSession()"
    if [ "$(id -u)" = 0 ] && chroot "$DEST" "/usr/bin/$PYNAME" -I -S -B -c pass 2>/dev/null; then
        chroot "$DEST" "/usr/bin/$PYNAME" -I -S -B -c "$(echo "$check" | sed 's|@ROOT@||')"
    else
        "$DEST/usr/bin/$PYNAME" -I -S -B -c "$(echo "$check" | sed "s|@ROOT@|$DEST|")"
    fi || snpguard_fail "the agent does not import in the initrd's layout (a module or library missing above?)"
}
"""

HOOK = r"""#!/bin/sh
# snpguard-agent: put the SEV-SNP key-release agent into the initrd (written by snpguard.cvm; do not edit).
@PREREQS@

. /usr/share/initramfs-tools/hook-functions

AGENT=@AGENT_DIR@
DEST=$DESTDIR
snpguard_fail() { echo "E: snpguard-agent: $*" >&2; exit 1; }
copy_plain() { copy_file file "$1" "$2"; [ -e "$DEST$2" ] || snpguard_fail "cannot copy $1"; }
copy_many() { cp -a --parents "$@" "$DEST/" || snpguard_fail "cannot copy the Python modules"; }
# shellcheck disable=SC2046 # (library paths: no spaces)
copy_elves() { cp -L --parents "$@" $(snpguard_libs "$@") "$DEST/" || snpguard_fail "cannot copy $* or their libs"; }
@COPY_PYTHON@
[ -r @CONFIG@ ] || snpguard_fail "@CONFIG@ is missing"
[ -d "$AGENT" ] || snpguard_fail "$AGENT is missing"
[ -x /usr/sbin/cryptsetup ] || snpguard_fail "cryptsetup is not installed in the image"
snpguard_copy_python
copy_plain @CONFIG@ @CONFIG@
[ -r @CA@ ] && copy_plain @CA@ @CA@
# The cipher of the converter's LUKS2 (aes-xts-plain64) and its hash, whatever cryptsetup's hook found.
for module in sev-guest tsm tsm_report configfs dm_mod dm_crypt dm_integrity virtio_console \
        xts aes_generic aesni_intel sha256_generic; do
    manual_add_modules "$module" 2>/dev/null || true
done
auto_add_modules net
exit 0
"""

LOCAL_TOP = r"""#!/bin/sh
# snpguard-agent: attest, receive the LUKS key, open the root (written by snpguard.cvm; do not edit).
@PREREQS@

. /scripts/functions

@POWER_OFF@
snpguard_stop() {
    echo "snpguard-agent: $*"
    echo "snpguard-agent: stopping this boot: no root file system, no shell; powering off"
    snpguard_power_off
}

if [ -b "/dev/mapper/@MAPPER@" ]; then
    exit 0
fi
for module in sev-guest tsm dm_crypt; do modprobe -q "$module" 2>/dev/null || true; done
# Shell built-ins only where klibc has no tool (an initrd without busybox has no grep or rm).
configfs=
while read -r _dev mnt _rest; do [ "$mnt" = /sys/kernel/config ] && configfs=mounted; done < /proc/mounts
if [ -d /sys/kernel/config ] && [ -z "$configfs" ]; then
    mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
fi
# DHCP unless the measured command line's ip= says otherwise.
[ -n "${IP-}" ] || IP=dhcp
configure_networking
/usr/bin/python3 -I -S -B @AGENT_DIR@/snpguard-agent.py --config @CONFIG@
status=$?
[ "$status" -eq 0 ] || snpguard_stop "the root stays locked (agent status $status)"
# Leave no initrd network configuration behind for the real system's network stack.
for conf in /run/net-*.conf; do
    [ -e "$conf" ] || continue
    dev=${conf#/run/net-}; dev=${dev%.conf}
    if command -v ip >/dev/null 2>&1; then
        ip -4 addr flush dev "$dev" 2>/dev/null || true
        ip link set "$dev" down 2>/dev/null || true
    fi
    rm -f "$conf" 2>/dev/null || nuke "$conf" 2>/dev/null || : > "$conf"
done
exit 0
"""

PANIC = r"""#!/bin/sh
# snpguard-agent: no rescue shell in a confidential VM (written by snpguard.cvm; do not edit).
@PREREQS@
@POWER_OFF@
echo "snpguard-agent: initramfs panic: powering off instead of a rescue shell"
snpguard_power_off
"""
