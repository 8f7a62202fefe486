# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Getting a report inside the guest: ``attestation/report_sources.py`` and the ``snp_guest_report`` module.

What is NOT exercised here: the real configfs-tsm interface and the real
``/dev/sev-guest`` ioctls need an SEV-SNP guest (a kernel with the ``sev-guest``
driver talking to a real AMD-SP), which no machine here is.  Instead:

* configfs-tsm runs against a fake tree in a temporary directory.  On real configfs,
  ``mkdir`` of a report entry makes the kernel create its attribute files and ``rmdir``
  removes them; the test double gives ``report_sources`` an ``os`` whose ``mkdir`` and
  ``rmdir`` do the same (and record what was written to ``inblob`` and ``privlevel``).
* ``/dev/sev-guest`` is checked for its ABI (struct sizes and offsets, ioctl numbers,
  from /work/shared/reference/snp-formats.md §7.1), then driven through a fake
  ``ioctl`` that reads the request structures through the pointers the code passes
  and writes the response the way the driver does, including the "certificate buffer
  too small" retry.  One test hands the real ``fcntl.ioctl`` a regular file.
* ``get_report`` on this machine must say it is not an SEV-SNP guest.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible_run import registered_task, run_playbook

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation import report_sources
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.report_sources import (
    GuestReport,
    get_report,
    via_configfs,
    via_sev_guest,
    via_simulator,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.cert_table import build_cert_table, parse_cert_table
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import REPORT_SIZE, parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

REPORT_DATA = bytes(range(64))
CERTS = build_cert_table({"vcek": b"\x30\x82vcek-der", "ask": b"\x30\x82ask-der", "ark": b"\x30\x82ark-der"})


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedAmdSp, Path]:
    directory = tmp_path_factory.mktemp("guest_report") / "sim"
    sim = SimulatedAmdSp.create(Product.GENOA, rsa_bits=2048)
    save_simulated_amdsp(sim, str(directory))
    return sim, directory


@pytest.fixture(scope="module")
def a_report(simulator: tuple[SimulatedAmdSp, Path]) -> bytes:
    return simulator[0].report(report_data=REPORT_DATA)


# -- configfs-tsm against a fake tree -------------------------------------------------------------------------


class FakeTsm:
    """A configfs-tsm ``report`` directory whose entries behave like the kernel's (mkdir/rmdir)."""

    def __init__(self, root: Path, *, provider: str = "sev_guest", outblob: bytes = b"", auxblob: bytes | None = None):
        self.root = root
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.made: list[str] = []
        self.requests: list[dict[str, bytes]] = []  # what inblob/privlevel held when the entry was removed
        root.mkdir(parents=True)

    def _ours(self, path: Any) -> bool:
        return os.path.dirname(os.path.abspath(path)) == str(self.root)

    def mkdir(self, path: Any, mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        if not self._ours(path):
            return
        self.made.append(str(path))
        entry = Path(path)
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        (entry / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        (entry / "inblob").write_bytes(b"")
        (entry / "privlevel").write_bytes(b"")
        (entry / "privlevel_floor").write_text("0\n")

    def rmdir(self, path: Any) -> None:
        if not self._ours(path):
            os.rmdir(path)
            return
        entry = Path(path)
        self.requests.append({"inblob": (entry / "inblob").read_bytes(),
                              "privlevel": (entry / "privlevel").read_bytes()})
        shutil.rmtree(entry)  # configfs removes the attributes with the entry

    def entries(self) -> list[str]:
        return sorted(os.listdir(self.root))


class OsWithFakeConfigfs:
    """``os`` for guest_report, with configfs semantics for mkdir/rmdir under the fake root."""

    def __init__(self, fake: FakeTsm) -> None:
        self.mkdir = fake.mkdir
        self.rmdir = fake.rmdir

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.fixture
def tsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, a_report: bytes) -> FakeTsm:
    fake = FakeTsm(tmp_path / "config" / "tsm" / "report", outblob=a_report, auxblob=CERTS)
    monkeypatch.setattr(report_sources, "os", OsWithFakeConfigfs(fake))
    return fake


def test_configfs_writes_exactly_the_request_and_removes_the_entry(tsm: FakeTsm, a_report: bytes) -> None:
    got = via_configfs(REPORT_DATA, 2, str(tsm.root))
    assert got == GuestReport(a_report, CERTS, "configfs-tsm")
    assert len(tsm.made) == 1 and os.path.basename(tsm.made[0]).startswith("snpguard-")
    assert tsm.requests == [{"inblob": REPORT_DATA, "privlevel": b"2"}]
    assert tsm.entries() == []
    assert parse_cert_table(got.certs)["vcek"] == b"\x30\x82vcek-der"


def test_configfs_entries_are_unique(tsm: FakeTsm) -> None:
    via_configfs(REPORT_DATA, 0, str(tsm.root))
    via_configfs(bytes(64), 0, str(tsm.root))
    assert len(set(tsm.made)) == 2
    assert [r["inblob"] for r in tsm.requests] == [REPORT_DATA, bytes(64)]
    assert [r["privlevel"] for r in tsm.requests] == [b"0", b"0"]


def test_configfs_certificates_only_when_wanted_and_present(tsm: FakeTsm) -> None:
    assert via_configfs(REPORT_DATA, 0, str(tsm.root), want_certs=False).certs is None
    tsm.auxblob = b""  # the host supplies no certificates
    assert via_configfs(REPORT_DATA, 0, str(tsm.root)).certs is None
    tsm.auxblob = None  # older kernels have no auxblob at all
    assert via_configfs(REPORT_DATA, 0, str(tsm.root)).certs is None
    assert tsm.entries() == []


def test_configfs_refuses_another_provider_before_writing(tsm: FakeTsm) -> None:
    tsm.provider = "tdx_guest"
    with pytest.raises(SnpError, match="provider is 'tdx_guest', not sev_guest") as info:
        via_configfs(REPORT_DATA, 0, str(tsm.root))
    assert info.value.field == "configfs"
    assert tsm.requests == [{"inblob": b"", "privlevel": b""}]  # nothing was asked of another TSM
    assert tsm.entries() == []


def test_configfs_refuses_a_changed_generation(tsm: FakeTsm, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = report_sources._read

    def racing_read(path: str) -> bytes:
        data = real_read(path)
        if path.endswith("outblob"):  # another writer hits inblob while we read the report
            Path(path).with_name("generation").write_text("1\n")
        return data

    monkeypatch.setattr(report_sources, "_read", racing_read)
    with pytest.raises(SnpError, match="another writer changed the configfs-tsm entry") as info:
        via_configfs(REPORT_DATA, 0, str(tsm.root))
    assert info.value.field == "configfs"
    assert tsm.entries() == []


@pytest.mark.parametrize("size", [0, REPORT_SIZE - 1, REPORT_SIZE + 32])
def test_configfs_refuses_a_wrong_outblob_size(tsm: FakeTsm, a_report: bytes, size: int) -> None:
    tsm.outblob = (a_report * 2)[:size]
    with pytest.raises(SnpError, match=f"outblob is {size} bytes, expected {REPORT_SIZE}") as info:
        via_configfs(REPORT_DATA, 0, str(tsm.root))
    assert info.value.field == "configfs"
    assert tsm.entries() == []


def test_configfs_io_error_still_removes_the_entry(tsm: FakeTsm, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = report_sources._read

    def failing_read(path: str) -> bytes:
        if path.endswith("outblob"):
            raise OSError(errno.EIO, "Input/output error")
        return real_read(path)

    monkeypatch.setattr(report_sources, "_read", failing_read)
    with pytest.raises(SnpError, match="configfs-tsm request failed: Input/output error") as info:
        via_configfs(REPORT_DATA, 1, str(tsm.root))
    assert info.value.field == "configfs"
    assert tsm.requests == [{"inblob": REPORT_DATA, "privlevel": b"1"}]
    assert tsm.entries() == []


def test_configfs_cannot_create_an_entry(tmp_path: Path) -> None:
    with pytest.raises(SnpError, match="cannot create a configfs-tsm report entry") as info:
        via_configfs(REPORT_DATA, 0, str(tmp_path / "no-tsm"))
    assert info.value.field == "configfs" and info.value.path.startswith(str(tmp_path / "no-tsm"))


@pytest.mark.parametrize(("data", "vmpl", "field"), [(bytes(63), 0, "report_data"), (bytes(65), 0, "report_data"),
                                                     (b"", 0, "report_data"), (bytes(64), 4, "vmpl"),
                                                     (bytes(64), -1, "vmpl")])
def test_bad_requests_are_refused_before_touching_anything(tsm: FakeTsm, data: bytes, vmpl: int, field: str) -> None:
    for call in (lambda: via_configfs(data, vmpl, str(tsm.root)),
                 lambda: via_sev_guest(data, vmpl, str(tsm.root / "no-device")),
                 lambda: get_report(data, vmpl, tsm_root=str(tsm.root))):
        with pytest.raises(SnpError) as info:
            call()
        assert info.value.field == field
    assert tsm.made == []


# -- /dev/sev-guest: the ABI, then a fake driver ----------------------------------------------------------------


def _iowr(kind: str, nr: int, size: int) -> int:
    """Linux ``_IOWR(type, nr, size)`` on x86: dir (read|write) << 30 | size << 16 | type << 8 | nr."""
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


def test_sev_guest_structures_match_the_kernel_abi() -> None:
    guest, request, ext = report_sources._GuestRequest, report_sources._ReportRequest, report_sources._ExtReportRequest
    assert ctypes.sizeof(guest) == 32
    assert (guest.msg_version.offset, guest.req_data.offset, guest.resp_data.offset,
            guest.exitinfo2.offset) == (0, 8, 16, 24)
    assert ctypes.sizeof(request) == 96
    assert (request.user_data.offset, request.vmpl.offset, request.rsvd.offset) == (0, 0x40, 0x44)
    assert ctypes.sizeof(ext) == 112
    assert (ext.data.offset, ext.certs_address.offset, ext.certs_len.offset) == (0, 96, 104)


def test_sev_guest_ioctl_numbers() -> None:
    assert report_sources.SNP_GET_REPORT == _iowr("S", 0, 32) == 0xC0205300
    assert report_sources.SNP_GET_EXT_REPORT == _iowr("S", 2, 32) == 0xC0205302
    assert report_sources.SNP_GUEST_VMM_ERR_INVALID_LEN == 1


class FakeSevGuestDriver:
    """Answers SNP_GET_REPORT / SNP_GET_EXT_REPORT like sev-guest.c, through the pointers it is given."""

    def __init__(self, report: bytes, certs: bytes | None = None, *, status: int = 0, size: int = REPORT_SIZE,
                 error: int | None = None) -> None:
        self.report, self.certs, self.status, self.size, self.error = report, certs, status, size, error
        self.calls: list[dict[str, Any]] = []

    def ioctl(self, fd: int, request: int, arg: Any, *rest: Any) -> int:
        assert isinstance(arg, report_sources._GuestRequest)
        assert arg.msg_version == 1
        call: dict[str, Any] = {"request": request}
        if request == report_sources.SNP_GET_EXT_REPORT:
            ext = report_sources._ExtReportRequest.from_address(arg.req_data)
            req = ext.data
            call["certs_len"] = ext.certs_len
        elif request == report_sources.SNP_GET_REPORT:
            ext = None
            req = report_sources._ReportRequest.from_address(arg.req_data)
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        call.update(user_data=bytes(req.user_data), vmpl=req.vmpl, rsvd=bytes(req.rsvd))
        self.calls.append(call)
        if self.error is not None:
            arg.exitinfo2 = 0x0000000200000016
            raise OSError(self.error, os.strerror(self.error))
        if ext is not None and self.certs is not None:
            needed = (len(self.certs) + 0xFFF) & ~0xFFF
            if ext.certs_len < needed:  # too small: say how much, as the driver does
                ext.certs_len = needed
                arg.exitinfo2 = report_sources.SNP_GUEST_VMM_ERR_INVALID_LEN << 32
                raise OSError(errno.EIO, "Input/output error")
            ctypes.memmove(ext.certs_address, self.certs, len(self.certs))
        response = self.status.to_bytes(4, "little") + self.size.to_bytes(4, "little") + bytes(24) + self.report
        ctypes.memmove(arg.resp_data, response, len(response))
        return 0


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def _fake_driver(monkeypatch: pytest.MonkeyPatch, driver: FakeSevGuestDriver) -> None:
    class Fcntl:
        ioctl = staticmethod(driver.ioctl)

    monkeypatch.setattr(report_sources, "fcntl", Fcntl)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sev_guest_extended_report(monkeypatch: pytest.MonkeyPatch, device: Path, a_report: bytes) -> None:
    driver = FakeSevGuestDriver(a_report, CERTS)
    _fake_driver(monkeypatch, driver)
    fds = _open_fds()
    got = via_sev_guest(REPORT_DATA, 3, str(device))
    assert _open_fds() == fds
    assert got.source == "sev-guest" and got.report == a_report
    assert parse_cert_table(got.certs) == parse_cert_table(CERTS)
    assert [c["request"] for c in driver.calls] == [report_sources.SNP_GET_EXT_REPORT]
    call = driver.calls[0]
    assert call["user_data"] == REPORT_DATA and call["vmpl"] == 3 and call["rsvd"] == bytes(28)
    assert call["certs_len"] == 0x4000


def test_sev_guest_retries_with_the_certificate_length_the_driver_asks_for(
        monkeypatch: pytest.MonkeyPatch, device: Path, a_report: bytes) -> None:
    big = build_cert_table({"vcek": b"\x30" * 0x5000, "ask": b"\x31" * 0x800, "ark": b"\x32" * 0x800})
    driver = FakeSevGuestDriver(a_report, big)
    _fake_driver(monkeypatch, driver)
    got = via_sev_guest(REPORT_DATA, 0, str(device))
    assert [c["certs_len"] for c in driver.calls] == [0x4000, 0x7000]
    assert parse_cert_table(got.certs)["vcek"] == b"\x30" * 0x5000
    assert got.report == a_report


def test_sev_guest_without_host_certificates(monkeypatch: pytest.MonkeyPatch, device: Path, a_report: bytes) -> None:
    _fake_driver(monkeypatch, FakeSevGuestDriver(a_report, None))
    assert via_sev_guest(REPORT_DATA, 0, str(device)).certs is None


def test_sev_guest_plain_report_when_no_certificates_wanted(
        monkeypatch: pytest.MonkeyPatch, device: Path, a_report: bytes) -> None:
    driver = FakeSevGuestDriver(a_report, CERTS)
    _fake_driver(monkeypatch, driver)
    got = via_sev_guest(REPORT_DATA, 1, str(device), want_certs=False)
    assert got == GuestReport(a_report, None, "sev-guest")
    assert [(c["request"], c["user_data"], c["vmpl"]) for c in driver.calls] == [
        (report_sources.SNP_GET_REPORT, REPORT_DATA, 1)]


@pytest.mark.parametrize(
    ("driver", "needle"),
    [
        (dict(status=0x16), "the AMD-SP refused the request: status 0x16"),
        (dict(size=1000), "response holds 1000 bytes, expected 1184"),
        (dict(error=errno.EIO), r"request failed: Input/output error \(firmware error 0x16, VMM error 0x2\)"),
    ],
)
def test_sev_guest_failures_name_the_device(monkeypatch: pytest.MonkeyPatch, device: Path, a_report: bytes,
                                            driver: dict[str, int], needle: str) -> None:
    _fake_driver(monkeypatch, FakeSevGuestDriver(a_report, CERTS, **driver))
    fds = _open_fds()
    with pytest.raises(SnpError, match=needle) as info:
        via_sev_guest(REPORT_DATA, 0, str(device))
    assert info.value.field == "sev_guest" and info.value.path == str(device)
    assert _open_fds() == fds


def test_sev_guest_real_ioctl_on_a_regular_file(device: Path) -> None:
    for want_certs in (True, False):
        with pytest.raises(SnpError, match="request failed: Inappropriate ioctl for device") as info:
            via_sev_guest(REPORT_DATA, 0, str(device), want_certs=want_certs)
        assert info.value.field == "sev_guest"


def test_sev_guest_missing_device(tmp_path: Path) -> None:
    with pytest.raises(SnpError, match="cannot open") as info:
        via_sev_guest(REPORT_DATA, 0, str(tmp_path / "sev-guest"))
    assert info.value.field == "sev_guest"


# -- get_report: which source ----------------------------------------------------------------------------------


def test_get_report_on_this_machine_says_not_a_guest() -> None:
    assert not os.path.exists(report_sources.TSM_ROOT) and not os.path.exists(report_sources.SEV_GUEST_DEVICE), \
        "this test expects a machine that is not an SEV-SNP guest"
    with pytest.raises(SnpError) as info:
        get_report(REPORT_DATA)
    assert info.value.field == "report_source"
    assert str(info.value) == ("report_source: this is not an SEV-SNP guest: neither /sys/kernel/config/tsm/report "
                               "(configfs-tsm) nor /dev/sev-guest exists")


def test_get_report_prefers_configfs(tsm: FakeTsm, monkeypatch: pytest.MonkeyPatch, device: Path,
                                     a_report: bytes) -> None:
    driver = FakeSevGuestDriver(a_report, CERTS)
    _fake_driver(monkeypatch, driver)
    assert get_report(REPORT_DATA, tsm_root=str(tsm.root), device=str(device)).source == "configfs-tsm"
    assert driver.calls == []
    got = get_report(REPORT_DATA, 2, tsm_root=str(tsm.root / "absent"), device=str(device), want_certs=False)
    assert got.source == "sev-guest" and driver.calls[0]["vmpl"] == 2
    assert driver.calls[0]["request"] == report_sources.SNP_GET_REPORT


def test_get_report_simulated_only_when_asked(tsm: FakeTsm, simulator: tuple[SimulatedAmdSp, Path]) -> None:
    got = get_report(REPORT_DATA, 1, tsm_root=str(tsm.root), simulated_amdsp=str(simulator[1]))
    assert got.source == "simulated-amdsp" and tsm.made == []
    report = parse_report(got.report)
    assert report.report_data == REPORT_DATA and report.vmpl == 1
    assert set(parse_cert_table(got.certs)) == {"vcek", "ask", "ark"}
    bare = get_report(REPORT_DATA, 1, simulated_amdsp=str(simulator[1]), want_certs=False)
    assert bare.certs is None and parse_report(bare.report).report_data == REPORT_DATA


def test_simulator_applies_launch_json(tmp_path: Path, simulator: tuple[SimulatedAmdSp, Path]) -> None:
    directory = tmp_path / "sim"
    shutil.copytree(simulator[1], directory)
    launch = {"measurement": "11" * 48, "host_data": "22" * 32, "id_key_digest": "33" * 48,
              "author_key_digest": "44" * 48, "family_id": "55" * 16, "image_id": "66" * 16,
              "policy": "0x30000", "guest_svn": 7}
    (directory / "launch.json").write_text(json.dumps(launch))
    report = parse_report(via_simulator(REPORT_DATA, 0, str(directory)).report)
    assert report.measurement.hex() == launch["measurement"] and report.host_data.hex() == launch["host_data"]
    assert report.id_key_digest.hex() == launch["id_key_digest"]
    assert report.author_key_digest.hex() == launch["author_key_digest"] and report.author_key_en
    assert report.family_id.hex() == launch["family_id"] and report.image_id.hex() == launch["image_id"]
    assert report.policy == 0x30000 and report.guest_svn == 7
    (directory / "launch.json").write_text(json.dumps({"measurement": "not hex"}))
    with pytest.raises(SnpError, match="cannot read the simulated launch") as info:
        via_simulator(REPORT_DATA, 0, str(directory))
    assert info.value.field == "simulated_amdsp" and info.value.path == str(directory / "launch.json")


def test_simulator_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(SnpError, match="cannot read file") as info:
        via_simulator(REPORT_DATA, 0, str(tmp_path / "nothing"))
    assert info.value.field == "simulated_amdsp"


# -- the snp_guest_report module, run by ansible-playbook -------------------------------------------------------


@pytest.fixture(scope="module")
def module_results(simulator: tuple[SimulatedAmdSp, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("snp_guest_report")
    sim = str(simulator[1])

    def guest(name: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return registered_task("snpguard.cvm.snp_guest_report", name, args, **extra)

    tasks = [
        guest("simulated", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim, "vmpl": 1}),
        guest("dest", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim, "dest": str(tmp / "r.bin")}),
        guest("dest_check", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim,
                             "dest": str(tmp / "check.bin")}, check_mode=True),
        guest("dest_mode", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim, "dest": str(tmp / "m.bin"),
                            "mode": "0600"}),
        guest("dest_mode_check", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim,
                                  "dest": str(tmp / "m.bin"), "mode": "0640"}, check_mode=True),
        guest("no_certs", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim, "certificates": False}),
        guest("not_a_guest", {"report_data": REPORT_DATA.hex()}),
        guest("short", {"report_data": REPORT_DATA[:63].hex(), "simulated_amdsp": sim}),
        guest("not_hex", {"report_data": "zz" * 64, "simulated_amdsp": sim}),
        guest("bad_vmpl", {"report_data": REPORT_DATA.hex(), "simulated_amdsp": sim, "vmpl": 4}),
    ]
    return {"results": run_playbook(tmp, tasks, timeout=300), "tmp": tmp}


def test_module_returns_a_simulated_report(module_results: dict) -> None:
    result = module_results["results"]["simulated"]
    assert result["changed"] is False and result["source"] == "simulated-amdsp"
    report = parse_report(base64.b64decode(result["report_b64"]))
    assert report.report_data == REPORT_DATA and report.vmpl == 1
    assert set(parse_cert_table(base64.b64decode(result["certs_b64"]))) == {"vcek", "ask", "ark"}


def test_module_dest_and_check_mode(module_results: dict) -> None:
    results, tmp = module_results["results"], module_results["tmp"]
    assert results["dest"]["changed"] is True
    assert parse_report((tmp / "r.bin").read_bytes()).report_data == REPORT_DATA
    # check mode says that it would write, and writes nothing
    assert results["dest_check"]["changed"] is True and not results["dest_check"].get("skipped")
    assert "report_b64" in results["dest_check"] and not (tmp / "check.bin").exists()


def test_module_dest_takes_the_file_options(module_results: dict) -> None:
    results, tmp = module_results["results"], module_results["tmp"]
    assert stat.S_IMODE((tmp / "r.bin").stat().st_mode) == 0o644  # the default
    assert results["dest_mode"]["changed"] is True
    assert stat.S_IMODE((tmp / "m.bin").stat().st_mode) == 0o600
    assert results["dest_mode_check"]["changed"] is True  # (the file is still 0600: check mode)


@pytest.mark.parametrize(
    ("case", "field", "needle"),
    [
        ("not_a_guest", "report_source", "this is not an SEV-SNP guest"),
        ("short", "report_data", "must be exactly 64 bytes, got 63"),
        ("not_hex", "report_data", "must be 128 hex digits"),
        ("bad_vmpl", "vmpl", "4 is out of range 0..3"),
    ],
)
def test_module_failures_name_the_field(module_results: dict, case: str, field: str, needle: str) -> None:
    result = module_results["results"][case]
    assert result["failed"] is True and result["field"] == field
    assert result["msg"].startswith(field + ": ") and needle in result["msg"]


def test_module_certificates_false_returns_no_table(module_results: dict) -> None:
    result = module_results["results"]["no_certs"]
    assert not result.get("failed") and "report_b64" in result
    assert "certs_b64" not in result
