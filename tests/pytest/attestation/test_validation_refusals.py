# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Every refusal ``attest`` can make, each provoked once with the simulated AMD-SP.

* validation: every ``Expectations`` option refuses a report that does not meet it, naming
  the check and showing expected against actual (and accepts one that does);
* authenticity: untrusted root, wrong names, foreign signatures, validity periods, CRLs,
  VCEK/report binding (TCB, hwID, Turin's 8-byte hwID), VCEK/VLEK confusion, reserved
  bytes, signature algorithm, signing key, policy bit 17;
* positives: VCEK on Milan, Genoa and Turin, VLEK, and one real-size (RSA-4096) chain;
* ``expectations_from_options`` builds every option and refuses bad input naming ``expect.<name>``.

Chains use RSA-2048 for speed and are made once per module.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from simulated_chains import chain_fixture

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.checks import VerificationError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.policy import FLAG_BITS
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import (
    PLATFORM_INFO_BITS,
    SIGNED_SIZE,
    reserved_ranges,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import ReportFields, SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product, TcbVersion
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.validate import (
    POLICY_CONSTRAINTS,
    Expectations,
    expectations_from_options,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import Collateral, TrustSettings

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


milan = chain_fixture(Product.MILAN)
genoa = chain_fixture(Product.GENOA)
turin = chain_fixture(Product.TURIN)


@pytest.fixture(scope="module")
def impostor(milan: SimulatedAmdSp) -> SimulatedAmdSp:
    """Another Milan chain with the same names and chip: only its keys differ."""
    return SimulatedAmdSp.create(Product.MILAN, chip_id=milan.chip_id, tcb=milan.tcb, rsa_bits=2048)


@pytest.fixture(scope="module")
def vlek(milan: SimulatedAmdSp) -> tuple[Any, Any, Any]:
    return milan.vlek_chain()


def _collateral(sim: SimulatedAmdSp, **replace: Any) -> Collateral:
    return Collateral(**{"vek": sim.vcek, "ask": sim.ask, "ark": sim.ark, **replace})


def _trust(sim: SimulatedAmdSp, **settings: Any) -> TrustSettings:
    return TrustSettings(simulated_roots=(sim.ark,), **settings)


def _accepted(sim: SimulatedAmdSp, report: bytes, expect: Expectations | None = None, **kwargs: Any) -> None:
    result = attest(report, kwargs.pop("collateral", None) or _collateral(sim), kwargs.pop("trust", None) or
                    _trust(sim), expect or Expectations(), **kwargs)
    assert result.ok


def _refused(sim: SimulatedAmdSp, report: bytes, check: str, expect: Expectations | None = None,
             **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        attest(report, kwargs.pop("collateral", None) or _collateral(sim), kwargs.pop("trust", None) or _trust(sim),
               expect or Expectations(), **kwargs)
    error = info.value
    assert error.check == check, str(error)
    assert error.field == check and str(error).startswith(f"check {check} failed: ")
    return error


def _shows(error: VerificationError, expected: Any, actual: Any) -> None:
    """The refusal carries expected and actual, and its message shows both."""
    assert (error.expected, error.actual) == (expected, actual)
    text = str(error)

    def shown(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, list | tuple):
            return [shown(v) for v in value]
        return value

    assert f"(expected {shown(expected)}, got {shown(actual)})" in text, text


def _tcb(sim: SimulatedAmdSp, **change: int) -> TcbVersion:
    return TcbVersion.from_components(sim.product, **{**sim.tcb.components(), **change})


def _resign(sim: SimulatedAmdSp, fields: ReportFields | None = None, *, key: Any = None, signing_key: int = 0,
            **patch: int) -> bytes:
    """Encode, patch single bytes (offset=value, as ``at_0x34=2``), then sign."""
    data = sim.encode_report(fields or ReportFields(), signing_key=signing_key)
    for name, value in patch.items():
        data[int(name.removeprefix("at_"), 16)] = value
    return sim.sign(data, key)


# -- validation: every Expectations option ------------------------------------------------


@pytest.mark.parametrize(("name", "option"), [("measurement", "measurements"), ("id_key_digest", "id_key_digests")])
def test_fields_one_of_a_list(milan: SimulatedAmdSp, name: str, option: str) -> None:
    actual, listed = os.urandom(48), os.urandom(48)
    report = milan.report(**{name: actual})
    error = _refused(milan, report, name, Expectations(**{option: (listed,)}))
    _shows(error, [listed.hex()], actual)
    _accepted(milan, report, Expectations(**{option: (listed, actual)}))


@pytest.mark.parametrize(("name", "size"), [("host_data", 32), ("report_data", 64), ("family_id", 16),
                                            ("image_id", 16)])
def test_exact_fields(milan: SimulatedAmdSp, name: str, size: int) -> None:
    actual, wanted = os.urandom(size), os.urandom(size)
    report = milan.report(**{name: actual})
    error = _refused(milan, report, name, Expectations(**{name: wanted}))
    _shows(error, wanted, actual)
    _accepted(milan, report, Expectations(**{name: actual}))


def test_author_key_digests(milan: SimulatedAmdSp) -> None:
    digest, trusted = os.urandom(48), os.urandom(48)
    error = _refused(milan, milan.report(author_key_digest=digest, author_key_en=True), "author_key_digest",
                     Expectations(author_key_digests=(trusted,)))
    _shows(error, [trusted.hex()], digest)
    _accepted(milan, milan.report(author_key_digest=trusted, author_key_en=True),
              Expectations(author_key_digests=(trusted,)))


def test_author_key_digest_without_author_key_en(milan: SimulatedAmdSp) -> None:
    """The right digest in the field counts for nothing while AUTHOR_KEY_EN is 0."""
    trusted = os.urandom(48)
    error = _refused(milan, milan.report(author_key_digest=trusted, author_key_en=False), "author_key_digest",
                     Expectations(author_key_digests=(trusted,)))
    _shows(error, [trusted.hex()], "AUTHOR_KEY_EN=0")


def test_min_guest_svn(milan: SimulatedAmdSp) -> None:
    report = milan.report(guest_svn=3)
    _shows(_refused(milan, report, "guest_svn", Expectations(min_guest_svn=4)), ">= 4", 3)
    _accepted(milan, report, Expectations(min_guest_svn=3))


def test_vmpl(milan: SimulatedAmdSp) -> None:
    report = milan.report(vmpl=2)
    _shows(_refused(milan, report, "vmpl", Expectations(vmpl=0)), 0, 2)
    _accepted(milan, report, Expectations(vmpl=2))


def test_debug_refused_by_default(milan: SimulatedAmdSp) -> None:
    report = milan.report(policy=0x30000 | 1 << FLAG_BITS["debug"])
    _shows(_refused(milan, report, "policy.debug"), False, True)
    _accepted(milan, report, Expectations(allow_debug=True))
    _accepted(milan, milan.report(policy=0x30000))


@pytest.mark.parametrize("name", POLICY_CONSTRAINTS)
def test_policy_constraint(milan: SimulatedAmdSp, name: str) -> None:
    bit = 1 << FLAG_BITS[name]
    for policy in (0x30000 & ~bit | 1 << 17, 0x30000 | bit):  # the flag clear, then set
        actual = bool(policy & bit)
        report = milan.report(policy=policy)
        error = _refused(milan, report, f"policy.{name}", Expectations(policy={name: not actual}))
        _shows(error, not actual, actual)
        _accepted(milan, report, Expectations(policy={name: actual}))


def test_policy_constraints_cover_every_flag_but_debug() -> None:
    assert set(POLICY_CONSTRAINTS) == set(FLAG_BITS) - {"debug"}


def test_min_abi(milan: SimulatedAmdSp) -> None:
    report = milan.report(policy=0x30000 | 1 << 8 | 51)
    for minimum in ((1, 52), (2, 0)):
        error = _refused(milan, report, "policy.abi", Expectations(min_abi=minimum))
        _shows(error, f">= {minimum[0]}.{minimum[1]}", "1.51")
    for minimum in ((1, 51), (0, 99), (1, 0)):
        _accepted(milan, report, Expectations(min_abi=minimum))


@pytest.mark.parametrize("name", sorted(PLATFORM_INFO_BITS))
def test_platform_info_flag(milan: SimulatedAmdSp, name: str) -> None:
    bit = 1 << PLATFORM_INFO_BITS[name]
    for info in (0x1 & ~bit, 0x1 | bit):
        actual = bool(info & bit)
        report = milan.report(platform_info=info)
        error = _refused(milan, report, f"platform_info.{name}", Expectations(platform_info={name: not actual}))
        _shows(error, not actual, actual)
        _accepted(milan, report, Expectations(platform_info={name: actual}))


@pytest.mark.parametrize(("product", "component"), [
    *[("milan", c) for c in ("bootloader", "tee", "snp", "microcode")],
    *[("turin", c) for c in ("fmc", "bootloader", "tee", "snp", "microcode")],
])
def test_min_tcb_component(request: pytest.FixtureRequest, product: str, component: str) -> None:
    sim: SimulatedAmdSp = request.getfixturevalue(product)
    have = sim.tcb.components()
    report = sim.report()
    error = _refused(sim, report, "min_tcb.current", Expectations(min_tcb={component: have[component] + 1}))
    minimum = {**{k: 0 for k in have}, component: have[component] + 1}
    _shows(error, minimum, have)
    assert [r.name for r in error.results if r.failed] == [f"min_tcb.{n}" for n in ("current", "reported",
                                                                                    "committed", "launch")]
    _accepted(sim, report, Expectations(min_tcb={component: have[component]}))
    _accepted(sim, report, Expectations(min_tcb=have))


def test_min_tcb_fmc_ignored_off_turin(milan: SimulatedAmdSp) -> None:
    _accepted(milan, milan.report(), Expectations(min_tcb={"fmc": 255}))


@pytest.mark.parametrize("which", ["current", "reported", "committed", "launch"])
def test_min_tcb_each_tcb(milan: SimulatedAmdSp, which: str) -> None:
    low = _tcb(milan, snp=milan.tcb.snp - 1)
    report = milan.report(**{f"{which}_tcb": low})
    collateral = _collateral(milan, vek=milan.issue_vcek(low)) if which == "reported" else None
    expect = Expectations(min_tcb={"snp": milan.tcb.snp}, allow_provisional_firmware=True)
    error = _refused(milan, report, f"min_tcb.{which}", expect, collateral=collateral)
    _shows(error, {"bootloader": 0, "tee": 0, "snp": milan.tcb.snp, "microcode": 0}, low.components())
    failed = [r.name for r in error.results if r.failed]
    # a low CURRENT is also behind COMMITTED and REPORTED; nothing else fails
    assert failed == [f"min_tcb.{which}"] + (["tcb.consistency"] if which == "current" else [])
    if which != "current":
        _accepted(milan, report, dataclasses.replace(expect, min_tcb={"snp": low.snp}), collateral=collateral)


def test_tcb_consistency(milan: SimulatedAmdSp) -> None:
    high = _tcb(milan, snp=milan.tcb.snp + 1)
    allow = Expectations(allow_provisional_firmware=True)
    error = _refused(milan, milan.report(committed_tcb=high), "tcb.consistency", allow)
    assert error.actual == milan.tcb.components()
    assert str(high.components()) in error.expected
    # REPORTED ahead of CURRENT (with the VCEK KDS would issue for it)
    error = _refused(milan, milan.report(reported_tcb=high), "tcb.consistency", allow,
                     collateral=_collateral(milan, vek=milan.issue_vcek(high)))
    assert error.actual == milan.tcb.components()


def test_provisional_firmware_tcb(milan: SimulatedAmdSp) -> None:
    committed = _tcb(milan, microcode=milan.tcb.microcode - 1)
    report = milan.report(committed_tcb=committed)
    error = _refused(milan, report, "firmware.committed")
    _shows(error, {"tcb": committed.components(), "version": "1.55.21"},
           {"tcb": milan.tcb.components(), "version": "1.55.21"})
    _accepted(milan, report, Expectations(allow_provisional_firmware=True))


def test_provisional_firmware_version(milan: SimulatedAmdSp) -> None:
    report = _resign(milan, at_0x1ec=20)  # COMMITTED build 20, CURRENT build 21
    error = _refused(milan, report, "firmware.committed")
    _shows(error, {"tcb": milan.tcb.components(), "version": "1.55.20"},
           {"tcb": milan.tcb.components(), "version": "1.55.21"})
    _accepted(milan, report, Expectations(allow_provisional_firmware=True))


def test_chip_ids(milan: SimulatedAmdSp) -> None:
    other = os.urandom(64)
    _shows(_refused(milan, milan.report(), "chip_id", Expectations(chip_ids=(other,))), [other.hex()], milan.chip_id)
    _accepted(milan, milan.report(), Expectations(chip_ids=(other, milan.chip_id)))


def test_min_report_version(milan: SimulatedAmdSp) -> None:
    report = milan.report(version=3)
    _shows(_refused(milan, report, "report.version", Expectations(min_report_version=5)), ">= 5", 3)
    _accepted(milan, report, Expectations(min_report_version=3))
    _accepted(milan, milan.report(version=5), Expectations(min_report_version=5))


@pytest.mark.parametrize("name", ["launch_mit_vector", "current_mit_vector"])
def test_mitigation_vectors(milan: SimulatedAmdSp, name: str) -> None:
    report = milan.report(version=5, **{name: 0x5})
    _shows(_refused(milan, report, name, Expectations(**{name: 0x3})), "bits 0x3 set", "0x5")
    _accepted(milan, report, Expectations(**{name: 0x4}))
    _accepted(milan, report, Expectations(**{name: 0x5}))
    for version in (2, 3):  # before version 5 there is no mitigation vector to show
        error = _refused(milan, milan.report(version=version), name, Expectations(**{name: 0x1}))
        _shows(error, "bits 0x1", f"version {version}")


def test_signing_keys(milan: SimulatedAmdSp, vlek: tuple[Any, Any, Any]) -> None:
    _shows(_refused(milan, milan.report(), "signing_key", Expectations(signing_keys=("VLEK",))), ["VLEK"], "VCEK")
    asvk, cert, key = vlek
    report = _resign(milan, key=key, signing_key=1)
    collateral = _collateral(milan, vek=cert, ask=asvk)
    _shows(_refused(milan, report, "signing_key", Expectations(signing_keys=("VCEK",)), collateral=collateral),
           ["VCEK"], "VLEK")
    _accepted(milan, report, Expectations(signing_keys=("VLEK",)), collateral=collateral)


# -- authenticity ----------------------------------------------------------------------------


def _ca(sim: SimulatedAmdSp, cn: str, public_key: Any, *, issuer: Any = None, not_before: Any = None,
        not_after: Any = None, subject: Any = None) -> Any:
    """A CA certificate signed by the simulator's ARK key (RSASSA-PSS SHA-384, salt 48)."""
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    name = subject or x509.Name([*list(sim.ask.subject)[:-1], x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or sim.ark.subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 365 * DAY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=False))
    return builder.sign(sim._ark_key, hashes.SHA384(), rsa_padding=pss)


def test_simulated_root_not_configured(milan: SimulatedAmdSp) -> None:
    error = _refused(milan, milan.report(), "ark.pinned", trust=TrustSettings())
    assert error.expected is not None and "no simulated root" in str(error)
    # another simulated root does not vouch for this one
    other = SimulatedAmdSp.create(Product.MILAN, rsa_bits=1024)
    _refused(milan, milan.report(), "ark.pinned", trust=TrustSettings(simulated_roots=(other.ark,)))


def test_wrong_ask_subject(milan: SimulatedAmdSp) -> None:
    renamed = _ca(milan, "ASK-Milan", milan.ask.public_key())
    error = _refused(milan, milan.report(), "ask.subject", collateral=_collateral(milan, ask=renamed))
    _shows(error, "SEV-Milan", "ASK-Milan")
    # right name, but issued under another name than the ARK's
    stranger = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Milan")])
    foreign = _ca(milan, "", milan.ask.public_key(), issuer=stranger, subject=milan.ask.subject)
    _refused(milan, milan.report(), "ask.subject", collateral=_collateral(milan, ask=foreign))


def test_ask_signed_by_another_ark(milan: SimulatedAmdSp, impostor: SimulatedAmdSp) -> None:
    _refused(milan, milan.report(), "ask.signed_by_ark", collateral=_collateral(milan, ask=impostor.ask))


def test_vek_signed_by_another_key(milan: SimulatedAmdSp, impostor: SimulatedAmdSp) -> None:
    # the impostor's VCEK has this chip's hwID and TCB, and signs the report itself
    report = _resign(milan, key=impostor._vcek_key)
    error = _refused(milan, report, "vek.signed_by_ask", collateral=_collateral(milan, vek=impostor.vcek))
    assert [r.name for r in error.results if r.failed] == ["vek.signed_by_ask"]
    assert "does not verify" in str(error)


def test_report_signed_by_another_key(milan: SimulatedAmdSp, impostor: SimulatedAmdSp) -> None:
    _refused(milan, _resign(milan, key=impostor._vcek_key), "report.signature")


@pytest.mark.parametrize("case", ["expired", "not_yet_valid"])
def test_vek_validity(milan: SimulatedAmdSp, case: str) -> None:
    window = (NOW - 10 * DAY, NOW - DAY) if case == "expired" else (NOW + DAY, NOW + 10 * DAY)
    vek = milan.issue_vcek(milan.tcb, not_before=window[0], not_after=window[1])
    error = _refused(milan, milan.report(), "vek.validity", collateral=_collateral(milan, vek=vek))
    assert ("expired at" if case == "expired" else "not valid before") in str(error)


@pytest.mark.parametrize("case", ["expired", "not_yet_valid"])
def test_ask_validity(milan: SimulatedAmdSp, case: str) -> None:
    window = (NOW - 10 * DAY, NOW - DAY) if case == "expired" else (NOW + DAY, NOW + 10 * DAY)
    ask = _ca(milan, "", milan.ask.public_key(), subject=milan.ask.subject, not_before=window[0],
              not_after=window[1])
    _refused(milan, milan.report(), "ask.validity", collateral=_collateral(milan, ask=ask))


@pytest.mark.parametrize("when", [-DAY * 3, DAY * 365 * 30])
def test_ark_validity(milan: SimulatedAmdSp, when: datetime.timedelta) -> None:
    _refused(milan, milan.report(), "ark.validity", trust=_trust(milan, now=NOW + when))


def test_crl_revokes_the_ask(milan: SimulatedAmdSp) -> None:
    crl = milan.crl((milan.ask.serial_number,))
    error = _refused(milan, milan.report(), "crl.ask_not_revoked", collateral=_collateral(milan, crl=crl))
    _shows(error, "not revoked", f"revoked serial 0x{milan.ask.serial_number:x}")


def test_crl_revokes_the_vcek(milan: SimulatedAmdSp) -> None:
    crl = milan.crl((12345, milan.vcek.serial_number))
    error = _refused(milan, milan.report(), "crl.vek_not_revoked", collateral=_collateral(milan, crl=crl))
    _shows(error, "not revoked", f"revoked serial 0x{milan.vcek.serial_number:x}")
    _accepted(milan, milan.report(), collateral=_collateral(milan, crl=milan.crl((12345,))),
              trust=_trust(milan, require_crl=True))


def test_crl_signed_by_another_key(milan: SimulatedAmdSp, impostor: SimulatedAmdSp) -> None:
    error = _refused(milan, milan.report(), "crl.signature", collateral=_collateral(milan, crl=impostor.crl()))
    assert [r.name for r in error.results if r.failed] == ["crl.signature"]


@pytest.mark.parametrize("window", [(-10, -1), (1, 10)], ids=["stale", "not_yet_issued"])
def test_crl_freshness(milan: SimulatedAmdSp, window: tuple[int, int]) -> None:
    crl = milan.crl(last_update=NOW + window[0] * DAY, next_update=NOW + window[1] * DAY)
    _refused(milan, milan.report(), "crl.fresh", collateral=_collateral(milan, crl=crl))


def test_require_crl_without_crl(milan: SimulatedAmdSp) -> None:
    error = _refused(milan, milan.report(), "crl", trust=_trust(milan, require_crl=True))
    assert "required" in str(error)
    _accepted(milan, milan.report())  # without require_crl the missing CRL is only skipped


def test_vcek_for_another_tcb(milan: SimulatedAmdSp) -> None:
    other = _tcb(milan, snp=milan.tcb.snp - 1)
    error = _refused(milan, milan.report(), "vek.tcb", collateral=_collateral(milan, vek=milan.issue_vcek(other)))
    _shows(error, milan.tcb.components(), other.components())


def test_vcek_hwid_mismatch(milan: SimulatedAmdSp) -> None:
    hwid = os.urandom(64)
    error = _refused(milan, milan.report(), "vek.hwid",
                     collateral=_collateral(milan, vek=milan.issue_vcek(milan.tcb, hwid=hwid)))
    _shows(error, milan.chip_id, hwid)


def test_turin_chip_id_tail_must_be_zero(turin: SimulatedAmdSp) -> None:
    assert turin.chip_id[8:] == bytes(56)
    chip_id = turin.chip_id[:8] + b"\x01" + bytes(55)
    error = _refused(turin, turin.report(chip_id=chip_id), "vek.hwid")
    _shows(error, chip_id, turin.chip_id[:8])
    _accepted(turin, turin.report())


def test_vlek_report_with_vcek_chain(milan: SimulatedAmdSp, vlek: tuple[Any, Any, Any]) -> None:
    _asvk, _cert, key = vlek
    error = _refused(milan, _resign(milan, key=key, signing_key=1), "ask.subject")
    _shows(error, "SEV-VLEK-Milan", "SEV-Milan")


def test_vcek_report_with_vlek_chain(milan: SimulatedAmdSp, vlek: tuple[Any, Any, Any]) -> None:
    asvk, cert, _key = vlek
    error = _refused(milan, milan.report(), "ask.subject", collateral=_collateral(milan, vek=cert, ask=asvk))
    _shows(error, "SEV-Milan", "SEV-VLEK-Milan")


# Reserved (MBZ) bytes per version, inclusive, as the reference (§1, §1.3) lists them.
RESERVED = {
    2: [(0x04C, 0x04F), (0x188, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x1F8, 0x29F), (0x330, 0x49F)],
    3: [(0x04C, 0x04F), (0x18B, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x1F8, 0x29F), (0x330, 0x49F)],
    5: [(0x04C, 0x04F), (0x18B, 0x19F), (0x1EB, 0x1EB), (0x1EF, 0x1EF), (0x208, 0x29F), (0x330, 0x49F)],
}


def _reserved_cases() -> list[tuple[int, int]]:
    return [(version, offset) for version, ranges in RESERVED.items() for start, last in ranges
            for offset in sorted({start, last})]


def test_reserved_ranges_as_the_reference_lists() -> None:
    for version, ranges in RESERVED.items():
        assert [(start, end - 1) for start, end in reserved_ranges(version)] == ranges


@pytest.mark.parametrize(("version", "offset"), _reserved_cases())
def test_reserved_bytes(milan: SimulatedAmdSp, version: int, offset: int) -> None:
    data = milan.encode_report(ReportFields(version=version))
    if offset < SIGNED_SIZE:
        data[offset] = 0x01
        report = milan.sign(data)
    else:  # beyond the signature: not signed, so an attacker could set it freely
        report = bytearray(milan.sign(data))
        report[offset] = 0x01
        report = bytes(report)
    error = _refused(milan, report, "report.reserved")
    (shown,) = error.actual
    start, end = (int(x, 16) for x in shown.split("-"))
    assert start <= offset <= end


def test_signature_algo(milan: SimulatedAmdSp) -> None:
    _shows(_refused(milan, _resign(milan, at_0x34=2), "report.signature_algo"), 1, 2)


@pytest.mark.parametrize(("key_info", "shown"), [(7 << 2, "NONE"), (2 << 2, "reserved signing key 2"),
                                                 (1 << 5, "0x20"), (1 << 5 | 1 << 2, "0x24")])
def test_key_info(milan: SimulatedAmdSp, key_info: int, shown: str) -> None:
    """SIGNING_KEY NONE or reserved, or a reserved KEY_INFO bit: the refusal shows which."""
    error = _refused(milan, _resign(milan, at_0x48=key_info), "report.key_info")
    assert error.expected == "VCEK or VLEK"
    assert shown in str(error.actual), str(error)


@pytest.mark.parametrize("policy", [0x10000, 0x30000 | 1 << 26, 0x30000 | 1 << 63])
def test_policy_reserved_bits(milan: SimulatedAmdSp, policy: int) -> None:
    error = _refused(milan, milan.report(policy=policy), "report.policy")
    assert "bit 17" in str(error) if policy == 0x10000 else "reserved bit" in str(error)


def test_vcek_with_malformed_extension_refused_not_crashing(milan: SimulatedAmdSp) -> None:
    """A planted VCEK whose BasicConstraints is garbage must be a refusal, not a ValueError."""
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    vek = (x509.CertificateBuilder().subject_name(milan.vcek.subject).issuer_name(milan.ask.subject)
           .public_key(milan.vcek.public_key()).serial_number(7).not_valid_before(NOW - DAY)
           .not_valid_after(NOW + DAY)
           .add_extension(x509.UnrecognizedExtension(x509.oid.ExtensionOID.BASIC_CONSTRAINTS, b"\xff\x00"),
                          critical=False)
           .sign(milan._ask_key, hashes.SHA384(), rsa_padding=pss))
    error = _refused(milan, milan.report(), "certs.parse", collateral=_collateral(milan, vek=vek))
    assert str(error).startswith("check certs.parse failed: VEK ")
    assert {r.name: r.status for r in error.results}["report.signature"] == "skip"


# -- positives -------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["milan", "genoa", "turin"])
def test_vcek_chain_verifies(request: pytest.FixtureRequest, product: str) -> None:
    sim: SimulatedAmdSp = request.getfixturevalue(product)
    for version in (2, 3, 5):
        result = attest(sim.report(version=version), _collateral(sim), _trust(sim), Expectations(),
                        expected_product=sim.product)
        assert result.ok and result.product is sim.product
    passed = {r.name for r in result.results if r.status == "pass"}
    assert {"ark.pinned", "vek.hwid", "vek.tcb", "report.signature", "firmware.committed"} <= passed


def test_vlek_chain_verifies(milan: SimulatedAmdSp, vlek: tuple[Any, Any, Any]) -> None:
    asvk, cert, key = vlek
    collateral = _collateral(milan, vek=cert, ask=asvk)
    result = attest(_resign(milan, key=key, signing_key=1), collateral, _trust(milan))
    assert result.ok
    vcek_only = {r.name: r for r in result.results}["vek.hwid"]
    assert vcek_only.status == "pass" and vcek_only.actual is None  # a VLEK carries no hwID
    crl = milan.crl((milan.ask.serial_number,))  # revoking the ASK does not touch the ASVK
    _accepted(milan, _resign(milan, key=key, signing_key=1), collateral=dataclasses.replace(collateral, crl=crl))


def test_real_size_chain_verifies() -> None:
    """One chain with AMD's RSA-4096 keys, end to end (including a CRL)."""
    sim = SimulatedAmdSp.create(Product.GENOA, rsa_bits=4096)
    assert sim.ark.public_key().key_size == sim.ask.public_key().key_size == 4096
    collateral = _collateral(sim, crl=sim.crl())
    result = attest(sim.report(), collateral, _trust(sim, require_crl=True), Expectations(),
                    expected_product=sim.product)
    assert result.ok
    _refused(sim, sim.report(), "ark.pinned", collateral=collateral, trust=TrustSettings())


# -- expectations_from_options ---------------------------------------------------------------

OPTIONS: dict[str, Any] = {
    "measurements": ["aa" * 48],
    "measurement": "0x" + "bb" * 48,
    "host_data": "CC" * 32,
    "report_data": ["dd" * 64],
    "id_key_digests": ["11" * 48, "12" * 48],
    "author_key_digests": "13" * 48,
    "family_id": "14" * 16,
    "image_id": "15" * 16,
    "min_guest_svn": "3",
    "vmpl": 1,
    "allow_debug": True,
    "policy": {"smt": False, "single_socket": True},
    "min_abi": "1.51",
    "platform_info": {"tsme_enabled": True},
    "min_tcb": {"bootloader": 3, "snp": "20"},
    "allow_provisional_firmware": True,
    "chip_ids": ["16" * 64],
    "min_report_version": "0x3",
    "launch_mit_vector": "0x1",
    "current_mit_vector": 2,
    "signing_keys": ["VCEK"],
}


def test_expectations_from_options_builds_every_option() -> None:
    expect = expectations_from_options(OPTIONS)
    assert expect == Expectations(
        measurements=(bytes.fromhex("aa" * 48), bytes.fromhex("bb" * 48)),
        host_data=bytes.fromhex("cc" * 32), report_data=bytes.fromhex("dd" * 64),
        id_key_digests=(bytes.fromhex("11" * 48), bytes.fromhex("12" * 48)),
        author_key_digests=(bytes.fromhex("13" * 48),), family_id=bytes.fromhex("14" * 16),
        image_id=bytes.fromhex("15" * 16), min_guest_svn=3, vmpl=1, allow_debug=True,
        policy={"smt": False, "single_socket": True}, min_abi=(1, 51), platform_info={"tsme_enabled": True},
        min_tcb={"bootloader": 3, "snp": 20}, allow_provisional_firmware=True, chip_ids=(bytes.fromhex("16" * 64),),
        min_report_version=3, launch_mit_vector=1, current_mit_vector=2, signing_keys=("VCEK",))
    # every Expectations field is reachable from the options (nothing left at its default)
    default = Expectations()
    assert [f.name for f in dataclasses.fields(Expectations) if getattr(expect, f.name) == getattr(default, f.name)
            ] == []


def test_expectations_from_options_empty() -> None:
    assert expectations_from_options({}) == Expectations()
    assert expectations_from_options(dict.fromkeys(OPTIONS)) == Expectations()


BAD_OPTIONS = [
    ("measurements", ["zz" * 48], "measurements"),
    ("measurements", ["00" * 47], "measurements"),
    ("measurement", "xyz", "measurement"),
    ("host_data", ["00" * 32, "11" * 32], "host_data"),
    ("host_data", "00" * 31, "host_data"),
    ("report_data", "0g" * 64, "report_data"),
    ("id_key_digests", ["00" * 32], "id_key_digests"),
    ("author_key_digests", ["q"], "author_key_digests"),
    ("family_id", "00" * 15, "family_id"),
    ("image_id", "x", "image_id"),
    ("min_guest_svn", "ten", "min_guest_svn"),
    ("vmpl", "first", "vmpl"),
    ("min_abi", "1", "min_abi"),
    ("min_abi", "1.x", "min_abi"),
    ("policy", {"debugg": False}, "policy"),
    ("platform_info", {"smt": True}, "platform_info"),
    ("min_tcb", {"ucode": 1}, "min_tcb"),
    ("min_tcb", {"snp": 256}, "min_tcb"),
    ("min_tcb", {"snp": -1}, "min_tcb"),
    ("chip_ids", ["00" * 8], "chip_ids"),
    ("min_report_version", "v5", "min_report_version"),
    ("launch_mit_vector", "x", "launch_mit_vector"),
    ("current_mit_vector", [1], "current_mit_vector"),
    # (the next ones were once let through or crashed with ValueError/TypeError/AttributeError)
    ("min_tcb", {"snp": "x"}, "min_tcb"),
    ("min_tcb", {"snp": None}, "min_tcb"),
    ("min_tcb", ["snp"], "min_tcb"),
    ("policy", ["smt"], "policy"),
    ("policy", {"smt": "no"}, "policy"),  # a string is no flag: it would refuse every report
    ("platform_info", {"smt_enabled": "yes"}, "platform_info"),
    ("signing_keys", ["VCEKK"], "signing_keys"),
]


@pytest.mark.parametrize(("name", "value", "field"), BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v, _field in BAD_OPTIONS])
def test_expectations_from_options_refuses(name: str, value: Any, field: str) -> None:
    with pytest.raises(SnpError) as info:
        expectations_from_options({name: value})
    assert info.value.field == f"expect.{field}", str(info.value)


def test_expectations_from_options_single_signing_key() -> None:
    """One key type given as a string is that key type, never its characters."""
    assert expectations_from_options({"signing_keys": "VLEK"}).signing_keys == ("VLEK",)
