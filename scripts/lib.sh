# shellcheck shell=bash
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
#
# Shared pieces of scripts/setup and scripts/test (sourced, not run).
# Every function is idempotent: it checks first and only then changes anything.

SNPGUARD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$SNPGUARD_ROOT/.venv"
# The interpreter of a fresh Debian 12: never whatever python3 comes first on PATH.
BASE_PYTHON=/usr/bin/python3

# Debian packages for the venv, git, and unpacking .debs (apt, dpkg-deb, gpgv).
# shellcheck disable=SC2034  # used by the scripts that source this file
# Image conversion: libguestfs (its Python binding, and a host kernel for its appliance),
# cryptsetup and the file-system tools the appliance copies from the host. The main job: mmdebstrap
# (the sample's stock Debian 13 image), openssh-client (the controller's key for the VMs); dosfstools
# and mtools also make the VMs' cloud-init seeds.
SETUP_DEBS=(python3 python3-venv python3-pip git ca-certificates debian-archive-keyring gpgv
  dpkg-dev xz-utils zstd libguestfs-tools python3-guestfs linux-image-amd64 cryptsetup-bin
  dosfstools gdisk e2fsprogs mtools qemu-utils mmdebstrap openssh-client)

if [ -t 1 ]; then
  log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
else
  log() { printf '==> %s\n' "$*"; }
fi
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for: $* (run as root, or install sudo)"
  fi
}

# ensure_debs PKG... : apt-get update + install only when something is missing.
ensure_debs() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages present: $*"
    return 0
  fi
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ensure_venv: .venv made by /usr/bin/python3 -m venv (recreated only when broken).
ensure_venv() {
  [ -x "$BASE_PYTHON" ] || die "$BASE_PYTHON is missing (apt-get install python3)"
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
    local home
    home=$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null)
    [ "$home" = /usr/bin ] || warn "$VENV was not made by $BASE_PYTHON (home = $home); remove it to recreate"
    log "venv present: $VENV ($("$VENV/bin/python" -V 2>&1))"
    return 0
  fi
  log "creating $VENV with $BASE_PYTHON -m venv"
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
}

# link_guestfs: Debian's python3-guestfs is built for /usr/bin/python3, the venv's base
# interpreter, but a venv does not see dist-packages: link the binding's two files in.
link_guestfs() {
  local site file
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  for file in /usr/lib/python3/dist-packages/guestfs.py /usr/lib/python3/dist-packages/libguestfsmod*.so; do
    [ -e "$file" ] || die "python3-guestfs is not installed ($file missing)"
    ln -sfn "$file" "$site/$(basename "$file")"
  done
  "$VENV/bin/python" -c 'import guestfs' || die "the venv cannot import guestfs"
}

# vpip ARGS... : pip of the venv, quiet unless it fails (the log is kept in build/logs).
vpip() {
  local log_file="$SNPGUARD_ROOT/build/logs/pip.log"
  mkdir -p "$(dirname "$log_file")"
  printf '\n$ pip %s\n' "$*" >>"$log_file"
  if ! "$VENV/bin/python" -m pip "$@" >>"$log_file" 2>&1; then
    tail -n 40 "$log_file" >&2
    die "pip $* failed (full log: $log_file)"
  fi
}

# ensure_requirements FILE...: pip install -r each FILE, at the exact versions of constraints.txt
# (scripts/freeze_constraints.py venv --write), so a new upstream release changes nothing unannounced.
ensure_requirements() { # FILE...
  local file args=(-c "$SNPGUARD_ROOT/constraints.txt")
  for file in "$@"; do args+=(-r "$SNPGUARD_ROOT/$file"); done
  log "pip install ${args[*]}"
  vpip install -q "${args[@]}"
}

# install_collection: the checkout as a wheel, i.e. site-packages/ansible_collections/snpguard/cvm.
install_collection() {
  log "pip install --no-deps . (collection into $VENV site-packages)"
  vpip install -q --no-deps "$SNPGUARD_ROOT"
}

fetch_artifacts() {
  log "scripts/fetch-artifacts"
  bash "$SNPGUARD_ROOT/scripts/fetch-artifacts"
}

# sample_image [DIR]: the sample's stock Debian 13 cloud image (scripts/cloud_image.py, cached in
# ~/.cache/snpguard/cloud-images), linked where the sample inventory expects it (default build/sample).
sample_image() {
  local dir=${1:-$SNPGUARD_ROOT/build/sample} image
  image=$("$VENV/bin/python" "$SNPGUARD_ROOT/scripts/cloud_image.py" build --variant initramfs-tools) || return 1
  mkdir -p "$dir" && ln -sfn "$image" "$dir/debian-13-stock.qcow2" || return 1
  echo "sample stock image: $dir/debian-13-stock.qcow2 -> $image"
}
