# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Ask the AMD-SP for a report from inside an SEV-SNP guest: configfs-tsm first, then /dev/sev-guest.

configfs-tsm (Linux 6.7+) is the kernel's provider-neutral interface: make an entry,
write 64 bytes of REPORT_DATA to ``inblob``, read ``outblob`` (the bare report) and
``auxblob`` (the host's certificate table, if any); ``generation`` detects a racing
writer.  Older kernels have only the /dev/sev-guest ioctls.  Pure stdlib.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import uuid
from dataclasses import dataclass

from ..snp.errors import SnpError
from ..snp.report import REPORT_SIZE

TSM_ROOT = "/sys/kernel/config/tsm/report"
SEV_GUEST_DEVICE = "/dev/sev-guest"

# _IOWR('S', nr, struct snp_guest_request_ioctl) with a 32-byte argument.
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
MAX_CERTS_LEN = 0x4000 * 4


@dataclass(frozen=True)
class GuestReport:
    report: bytes
    certs: bytes | None  # GHCB certificate table, when the host supplies one
    source: str


def _check_request(report_data: bytes, vmpl: int) -> None:
    if len(report_data) != 64:
        raise SnpError(f"must be exactly 64 bytes, got {len(report_data)}", field="report_data")
    if not 0 <= vmpl <= 3:
        raise SnpError(f"{vmpl} is out of range 0..3", field="vmpl")


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def via_configfs(report_data: bytes, vmpl: int = 0, root: str = TSM_ROOT, want_certs: bool = True) -> GuestReport:
    _check_request(report_data, vmpl)
    entry = os.path.join(root, f"snpguard-{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(entry)
    except OSError as exc:
        raise SnpError(f"cannot create a configfs-tsm report entry: {exc.strerror}", field="configfs",
                       path=entry) from exc
    try:
        provider = _read(os.path.join(entry, "provider")).decode().strip()
        if provider != "sev_guest":
            raise SnpError(f"configfs-tsm provider is {provider!r}, not sev_guest (not an SEV-SNP guest)",
                           field="configfs", path=entry)
        _write(os.path.join(entry, "privlevel"), str(vmpl).encode())
        _write(os.path.join(entry, "inblob"), report_data)
        generation = _read(os.path.join(entry, "generation")).strip()
        report = _read(os.path.join(entry, "outblob"))
        certs = None
        aux = os.path.join(entry, "auxblob")
        if want_certs and os.path.exists(aux):
            certs = _read(aux) or None
        if _read(os.path.join(entry, "generation")).strip() != generation:
            raise SnpError("another writer changed the configfs-tsm entry while reading; retry",
                           field="configfs", path=entry)
    except OSError as exc:
        raise SnpError(f"configfs-tsm request failed: {exc.strerror}", field="configfs", path=entry) from exc
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(entry)
    if len(report) != REPORT_SIZE:
        raise SnpError(f"outblob is {len(report)} bytes, expected {REPORT_SIZE}", field="configfs", path=entry)
    return GuestReport(report, certs, "configfs-tsm")


class _GuestRequest(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 7), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]


class _ReportRequest(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28)]


class _ExtReportRequest(ctypes.Structure):
    _fields_ = [("data", _ReportRequest), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


def via_sev_guest(report_data: bytes, vmpl: int = 0, device: str = SEV_GUEST_DEVICE,
                  want_certs: bool = True) -> GuestReport:
    """SNP_GET_EXT_REPORT (with the host's certificates) or SNP_GET_REPORT on /dev/sev-guest."""
    _check_request(report_data, vmpl)
    request = _ReportRequest()
    ctypes.memmove(request.user_data, report_data, 64)
    request.vmpl = vmpl
    response = ctypes.create_string_buffer(4000)
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise SnpError(f"cannot open {device}: {exc.strerror}", field="sev_guest", path=device) from exc
    try:
        certs = None
        if want_certs:
            certs_buf = ctypes.create_string_buffer(0x4000)
            ext = _ExtReportRequest(request, ctypes.addressof(certs_buf), len(certs_buf), 0)
            guest = _GuestRequest(1, (ctypes.c_uint8 * 7)(), ctypes.addressof(ext), ctypes.addressof(response), 0)
            try:
                fcntl.ioctl(fd, SNP_GET_EXT_REPORT, guest)
            except OSError as exc:
                if exc.errno == errno.EIO and guest.exitinfo2 >> 32 == SNP_GUEST_VMM_ERR_INVALID_LEN \
                        and 0 < ext.certs_len <= MAX_CERTS_LEN:
                    certs_buf = ctypes.create_string_buffer(ext.certs_len)
                    ext = _ExtReportRequest(request, ctypes.addressof(certs_buf), len(certs_buf), 0)
                    guest = _GuestRequest(1, (ctypes.c_uint8 * 7)(), ctypes.addressof(ext),
                                          ctypes.addressof(response), 0)
                    fcntl.ioctl(fd, SNP_GET_EXT_REPORT, guest)
                else:
                    raise
            certs = certs_buf.raw if any(certs_buf.raw[:24]) else None
        else:
            guest = _GuestRequest(1, (ctypes.c_uint8 * 7)(), ctypes.addressof(request), ctypes.addressof(response), 0)
            fcntl.ioctl(fd, SNP_GET_REPORT, guest)
    except OSError as exc:
        raise SnpError(f"{device} request failed: {exc.strerror} (firmware error 0x{guest.exitinfo2 & 0xffffffff:x},"
                       f" VMM error 0x{guest.exitinfo2 >> 32:x})", field="sev_guest", path=device) from exc
    finally:
        os.close(fd)
    raw = response.raw
    status = int.from_bytes(raw[0:4], "little")
    size = int.from_bytes(raw[4:8], "little")
    if status != 0:
        raise SnpError(f"the AMD-SP refused the request: status 0x{status:x}", field="sev_guest", path=device)
    if size != REPORT_SIZE:
        raise SnpError(f"response holds {size} bytes, expected {REPORT_SIZE}", field="sev_guest", path=device)
    return GuestReport(raw[0x20:0x20 + REPORT_SIZE], certs, "sev-guest")


def via_simulator(report_data: bytes, vmpl: int, directory: str) -> GuestReport:
    """A report from a SIMULATED AMD-SP directory (test labs only; verifiers refuse it by default).

    The directory holds the simulator's chain and keys and, optionally, ``launch.json``
    with the fields the launch fixed (measurement, host_data, policy, id/author key
    digests, family/image id, guest_svn), as the host recorded them when QEMU started.
    """
    import json

    from ..snp.cert_table import build_cert_table
    from ..snp.crypto_guard import serialization
    from ..snp.simulated_amdsp import ReportFields
    from .simulator_store import load_simulated_amdsp

    _check_request(report_data, vmpl)
    simulator = load_simulated_amdsp(directory)
    fields = ReportFields(report_data=report_data, vmpl=vmpl)
    launch_path = os.path.join(directory, "launch.json")
    if os.path.exists(launch_path):
        try:
            with open(launch_path, encoding="utf-8") as handle:
                launch = json.load(handle)
            for name in ("measurement", "host_data", "id_key_digest", "author_key_digest", "family_id", "image_id"):
                if launch.get(name):
                    setattr(fields, name, bytes.fromhex(launch[name]))
            for name in ("policy", "guest_svn"):
                if launch.get(name) is not None:
                    setattr(fields, name, int(str(launch[name]), 0))
            fields.author_key_en = bool(launch.get("author_key_digest"))
        except (OSError, ValueError, TypeError) as exc:
            raise SnpError(f"cannot read the simulated launch: {exc}", field="simulated_amdsp",
                           path=launch_path) from exc
    report = simulator.report(fields)
    der = serialization.Encoding.DER
    certs = build_cert_table({"vcek": simulator.vcek.public_bytes(der), "ask": simulator.ask.public_bytes(der),
                              "ark": simulator.ark.public_bytes(der)})
    return GuestReport(report, certs, "simulated-amdsp")


#: The virtio-serial port through which a simulated launch's host-side AMD-SP answers (qemu/argv.py).
CHANNEL_NAME = "org.snpguard.amdsp.0"
VIRTIO_PORTS = "/sys/class/virtio-ports"


def find_channel(name: str = CHANNEL_NAME, sysfs: str = VIRTIO_PORTS, dev: str = "/dev") -> str:
    """The device of the virtio-serial port called ``name`` (no udev needed: sysfs names it)."""
    try:
        ports = sorted(os.listdir(sysfs))
    except OSError:
        ports = []
    for port in ports:
        try:
            with open(os.path.join(sysfs, port, "name"), encoding="ascii") as handle:
                if handle.read().strip() == name:
                    return os.path.join(dev, port)
        except (OSError, UnicodeDecodeError):
            continue
    raise SnpError(f"no virtio-serial port named {name} (is this a simulated launch?)", field="report_source",
                   path=sysfs)


def via_channel(report_data: bytes, vmpl: int = 0, port: str | None = None) -> GuestReport:
    """A report from the host's simulated AMD-SP over its virtio-serial port (``REPORT hex vmpl`` → ``OK b64 b64``).

    Selected only when configured: a simulated launch's reports are trusted by a verifier
    only when it is told the simulated root explicitly.
    """
    import base64
    import binascii

    _check_request(report_data, vmpl)
    device = port or find_channel()
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, f"REPORT {report_data.hex()} {vmpl}\n".encode())
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 1 << 16:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(fd)
    parts = answer.strip().split()
    if not parts or parts[0] != b"OK" or len(parts) != 3:
        raise SnpError(f"the simulated AMD-SP refused: {answer.strip()[:200].decode(errors='replace')}",
                       field="report_source", path=device)
    try:
        report, certs = base64.b64decode(parts[1], validate=True), base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SnpError("the simulated AMD-SP's answer is not base64", field="report_source", path=device) from exc
    if len(report) != REPORT_SIZE:
        raise SnpError(f"the simulated AMD-SP sent {len(report)} bytes, not a report", field="report_source")
    return GuestReport(report, certs or None, "simulated-channel")


def get_report(report_data: bytes, vmpl: int = 0, *, want_certs: bool = True, tsm_root: str = TSM_ROOT,
               device: str = SEV_GUEST_DEVICE, simulated_amdsp: str | None = None,
               channel: str | None = None) -> GuestReport:
    """A report from configfs-tsm when the kernel has it, else from /dev/sev-guest.

    ``simulated_amdsp`` (explicit only) uses a simulated AMD-SP directory instead;
    ``channel`` (explicit only: a port device, or "auto" to find it by name) the host's
    simulated AMD-SP of a simulated launch.
    """
    if channel:
        answer = via_channel(report_data, vmpl, None if channel == "auto" else channel)
        return answer if want_certs else GuestReport(answer.report, None, answer.source)
    if simulated_amdsp:
        simulated = via_simulator(report_data, vmpl, simulated_amdsp)
        return simulated if want_certs else GuestReport(simulated.report, None, simulated.source)
    if os.path.isdir(tsm_root):
        return via_configfs(report_data, vmpl, tsm_root, want_certs)
    if os.path.exists(device):
        return via_sev_guest(report_data, vmpl, device, want_certs)
    raise SnpError(f"this is not an SEV-SNP guest: neither {tsm_root} (configfs-tsm) nor {device} exists",
                   field="report_source")
