# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The launcher's QEMU command line and libvirt XML against Debian's real QEMU 10 (trixie) and 11 (sid).

No SEV hardware here, so QEMU cannot *run* an SNP guest; but it parses and creates
every object before it needs KVM.  So the real command line (with ``-accel tcg``, the
only change) must get as far as ``cannot set up private guest memory for sev-snp-guest:
KVM required`` — any unknown property or malformed value stops QEMU earlier with another
message (a control with a misspelt property shows it).  Property types come from QMP's
``qom-list-properties``.  The domain XML is checked with that libvirt's virt-xml-validate.
The roots are built by scripts/qemu_roots.py (cached; chroot, so root is needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.argv import SEV_SNP_GUEST, build_argv
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.libvirt import domain_xml
from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock

pytestmark = pytest.mark.slow
SUITES = ("trixie", "sid")
KVM_REQUIRED = "KVM required"
QOM_TYPES = {"policy": "uint64", "cbitpos": "uint32", "reduced-phys-bits": "uint32", "kernel-hashes": "bool",
             "id-block": "string", "id-auth": "string", "author-key-enabled": "bool", "host-data": "string"}


def in_root(suite: str, argv: list[str], binds: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in the ``suite`` root (built on first use)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the QEMU roots need root (chroot)")
        pytest.skip("the QEMU roots need root (chroot)")
    sys.path.insert(0, str(REPO / "scripts"))
    import qemu_roots

    return qemu_roots.run(suite, argv, binds or [])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, firmware: Path, kernel: Path) -> Path:
    """A directory the roots see at the same path, holding the files the command line names."""
    directory = Path(tmp_path_factory.mktemp("qemu-versions"))
    shutil.copy(firmware, directory / "OVMF.amdsev.fd")
    shutil.copy(kernel, directory / "vmlinuz")
    (directory / "initrd").write_bytes(b"\0" * 512)
    (directory / "state").mkdir()
    return directory


def snp_config(work: Path, **overrides: object) -> VmConfig:
    key, _pem = sev_keys.generate_private_key()
    author, _apem = sev_keys.generate_private_key()
    block = IdBlock.build("ab" * 48, "01" * 16, "02" * 16, 1, 0x30000)
    config = VmConfig(name="versions", state_dir=str(work / "state"), firmware=str(work / "OVMF.amdsev.fd"),
                      kernel=str(work / "vmlinuz"), initrd=str(work / "initrd"), cmdline="console=ttyS0 quiet",
                      vcpus=2, vcpu_type="EPYC-v4", memory_mb=512, cbitpos=51, reduced_phys_bits=1,
                      id_block=block.to_b64(), id_auth=IdAuth.build(block, key, author).to_b64(),
                      author_key_enabled=True, host_data=bytes(range(32)))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def tcg(argv: list[str]) -> list[str]:
    """The real command line with the one change this machine needs: TCG for KVM; in the foreground."""
    out = list(argv)
    out[out.index("-accel") + 1] = "tcg"
    return out


@pytest.mark.parametrize("suite", SUITES)
def test_qom_knows_every_property_we_set_with_its_type(suite: str) -> None:
    qmp = ('{"execute":"qmp_capabilities"}\n'
           '{"execute":"qom-list-properties","arguments":{"typename":"sev-snp-guest"}}\n{"execute":"quit"}\n')
    result = in_root(suite, ["sh", "-c", f"printf '%s' '{qmp}' | qemu-system-x86_64 -machine none -accel tcg "
                                         "-nodefaults -display none -qmp stdio"])
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    properties = next(a["return"] for a in answers if isinstance(a.get("return"), list))
    types = {p["name"]: p["type"] for p in properties}
    for prop in SEV_SNP_GUEST:
        if prop.key == "id":
            continue
        assert prop.key in types, f"{suite}: sev-snp-guest has no property {prop.key!r} ({sorted(types)})"
        assert types[prop.key] == QOM_TYPES[prop.key], (suite, prop.key, types[prop.key])


@pytest.mark.parametrize("suite", SUITES)
def test_the_real_command_line_gets_as_far_as_needing_kvm(suite: str, work: Path) -> None:
    argv = tcg(build_argv(snp_config(work), daemonize=False))
    argv[0] = "qemu-system-x86_64"
    result = in_root(suite, argv, [str(work)])
    assert KVM_REQUIRED in result.stderr, f"{suite}: {result.stderr}"


@pytest.mark.parametrize("suite", SUITES)
def test_control_a_misspelt_property_stops_qemu_earlier(suite: str, work: Path) -> None:
    argv = tcg(build_argv(snp_config(work), daemonize=False))
    argv[0] = "qemu-system-x86_64"
    index = next(i for i, a in enumerate(argv) if a.startswith("sev-snp-guest,"))
    argv[index] = argv[index].replace("host-data=", "hostdata=")
    result = in_root(suite, argv, [str(work)])
    assert KVM_REQUIRED not in result.stderr and "hostdata" in result.stderr, result.stderr


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("variant", ["full", "minimal"])
def test_the_domain_xml_validates(suite: str, work: Path, variant: str) -> None:
    config = snp_config(work) if variant == "full" else snp_config(work, id_block=None, id_auth=None,
                                                                   host_data=None, cbitpos=None,
                                                                   reduced_phys_bits=None)
    path = work / f"domain-{suite}-{variant}.xml"
    path.write_text(domain_xml(config))
    result = in_root(suite, ["virt-xml-validate", str(path), "domain"], [str(work)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("suite", SUITES)
def test_control_a_domain_without_policy_does_not_validate(suite: str, work: Path) -> None:
    path = work / f"domain-{suite}-nopolicy.xml"
    path.write_text("\n".join(line for line in domain_xml(snp_config(work)).splitlines() if "<policy>" not in line))
    result = in_root(suite, ["virt-xml-validate", str(path), "domain"], [str(work)])
    assert result.returncode != 0
