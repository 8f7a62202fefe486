# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The converter's parsers and refusals, without an appliance: options, os-release, kernel configs, GRUB defaults."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.verity import verity_cmdline
from ansible_collections.snpguard.cvm.plugins.module_utils.image.convert import (
    ConvertOptions,
    convert,
    gpt_script,
    initrd_command,
    measured_cmdline,
    output_size,
    packages_for,
    verity_hash_size,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.image.cvm_image import options_from
from ansible_collections.snpguard.cvm.plugins.module_utils.image.inspect import (
    ImageFacts,
    Kernel,
    Partition,
    parse_default_grub,
    parse_kernel_config,
    parse_os_release,
    select_kernel,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.image.packages import installed_packages
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

TRIXIE_OS_RELEASE = '''PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.2
ID=debian
'''


@pytest.fixture
def params(tmp_path: Path, convert_params: dict) -> dict:
    source = tmp_path / "stock.qcow2"
    source.write_bytes(b"QFI\xfb")
    return {**convert_params, "source": str(source)}


def test_options_accepted(params: dict) -> None:
    options = options_from(params)
    assert options.mode == "luks"
    assert options.vcpus == [1]
    assert options.policy == 0x30000
    assert options.pbkdf_memory_kib == 65536


@pytest.mark.parametrize(("change", "field"), [
    ({"mode": "plain"}, "mode"),
    ({"server_url": None}, "server_url"),
    ({"mode": "verity"}, "ingestion_public_key"),  # verity has no volume key to seal
    ({"mode": "verity", "ingestion_public_key": None, "volume_key_file": "/tmp/key"}, "volume_key_file"),
    ({"mode": "verity", "ingestion_public_key": None, "integrity": True}, "integrity"),
    ({"output": "SOURCE"}, "output"),
    ({"ingestion_public_key": None}, "ingestion_public_key"),
    ({"volume_key_file": "/tmp/key"}, "ingestion_public_key"),
    ({"ingestion_public_key": "not base64!"}, "ingestion_public_key"),
    ({"ingestion_public_key": base64.b64encode(b"short").decode()}, "ingestion_public_key"),
    ({"server_ca_file": "/nonexistent/ca.pem"}, "agent_ca_file"),
    ({"firmware": "/nonexistent/OVMF.fd"}, "firmware"),
    ({"vcpus": [0]}, "vcpus"),
    ({"vcpus": [2, 2]}, "vcpus"),
    ({"policy": "0x10000"}, "policy"),
    ({"policy": "debug=maybe"}, "policy.debug"),
    ({"pbkdf_memory_kib": 1024}, "pbkdf_memory_kib"),
    ({"pbkdf_iterations": 1}, "pbkdf_iterations"),
    ({"extra_cmdline": "a\nb"}, "extra_cmdline"),
])
def test_options_refused_naming_the_field(params: dict, change: dict, field: str) -> None:
    if change.get("output") == "SOURCE":
        change = {"output": params["source"]}
    params.update(change)
    with pytest.raises(SnpError) as info:
        options_from(params)
    assert info.value.field == field, str(info.value)


def test_os_release_is_parsed_not_run() -> None:
    parsed = parse_os_release(TRIXIE_OS_RELEASE + "EVIL=$(touch /tmp/pwned)\n")
    assert parsed["ID"] == "debian"
    assert parsed["VERSION_CODENAME"] == "trixie"
    assert parsed["VERSION_ID"] == "13"
    assert parsed["EVIL"] == "$(touch /tmp/pwned)"


def test_default_grub_arguments() -> None:
    texts = ['GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="root=/dev/vda1 console=tty0"\n',
             'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX console=ttyS0,115200 earlyprintk=ttyS0,115200"\n']
    assert parse_default_grub(texts) == ["console=tty0", "console=ttyS0,115200", "earlyprintk=ttyS0,115200",
                                         "quiet"]


@given(st.text(max_size=400))
def test_parsers_take_any_text(text: str) -> None:
    parse_os_release(text)
    parse_kernel_config(text)
    parse_default_grub([text])
    installed_packages(text)


def test_installed_packages_reads_status() -> None:
    status = ("Package: python3\nStatus: install ok installed\nVersion: 3.13\n\n"
              "Package: cryptsetup-bin\nStatus: deinstall ok config-files\n\n")
    assert installed_packages(status) == {"python3"}


def _facts(*kernels: Kernel) -> ImageFacts:
    root = Partition(device="/dev/sda1", number=1, start=128 << 20, size=2 << 30, fs_type="ext4", uuid="u",
                     label="", gpt_type="", gpt_guid="", name="")
    return ImageFacts(distro="debian", release="13", codename="trixie", arch="x86_64", root=root, partitions=[root],
                      disk_size=3 << 30, kernels=list(kernels), cmdline=["console=ttyS0"],
                      init_system="initramfs-tools", fstab="")


GOOD = {"CONFIG_AMD_MEM_ENCRYPT": "y", "CONFIG_SEV_GUEST": "m", "CONFIG_DM_CRYPT": "m", "CONFIG_DM_VERITY": "m",
        "CONFIG_OVERLAY_FS": "m"}


def test_kernel_selection_newest_and_named() -> None:
    old = Kernel("6.1.0-40-amd64", "/boot/vmlinuz-6.1.0-40-amd64", "/boot/initrd.img-6.1.0-40-amd64", dict(GOOD))
    new = Kernel("6.12.57+deb13-amd64", "/boot/vmlinuz-6.12.57+deb13-amd64", "/boot/i", dict(GOOD))
    facts = _facts(old, new)
    assert select_kernel(facts, None, "luks") is new
    assert select_kernel(facts, "6.1.0-40-amd64", "luks") is old
    with pytest.raises(SnpError, match="not in the image") as info:
        select_kernel(facts, "5.10.0-1-amd64", "luks")
    assert info.value.field == "kernel"


@pytest.mark.parametrize(("option", "mode"), [
    ("CONFIG_AMD_MEM_ENCRYPT", "luks"), ("CONFIG_SEV_GUEST", "luks"), ("CONFIG_DM_CRYPT", "luks"),
    ("CONFIG_DM_VERITY", "verity"), ("CONFIG_OVERLAY_FS", "verity"), ("CONFIG_SEV_GUEST", "verity")])
def test_kernel_without_snp_guest_support_is_refused_naming_the_option(option: str, mode: str) -> None:
    config = dict(GOOD)
    config[option] = "n" if option != "CONFIG_SEV_GUEST" else ""
    kernel = Kernel("6.12.57+deb13-amd64", "/boot/vmlinuz", "/boot/initrd.img", config)
    with pytest.raises(SnpError, match=option) as info:
        select_kernel(_facts(kernel), None, mode)
    assert info.value.field == "kernel"


def test_kernel_without_config_or_initrd_is_refused() -> None:
    with pytest.raises(SnpError, match="config"):
        select_kernel(_facts(Kernel("6.12", "/boot/vmlinuz-6.12", "/boot/initrd.img-6.12", {})), None, "luks")
    with pytest.raises(SnpError, match="no initrd"):
        select_kernel(_facts(Kernel("6.12", "/boot/vmlinuz-6.12", None, dict(GOOD))), None, "luks")
    with pytest.raises(SnpError, match="no kernel"):
        select_kernel(_facts(), None, "luks")


def test_the_plan_accepts_the_stock_layout_and_names_what_it_refuses(params: dict) -> None:
    """What inspection found but the conversion cannot do: an initrd generator it does not drive, a dracut
    image without systemd, a root that is not the last partition (it could not grow)."""
    from ansible_collections.snpguard.cvm.plugins.module_utils.image.convert import _plan
    options = options_from(params)
    kernel = Kernel("6.12", "/boot/vmlinuz-6.12", "/boot/initrd.img-6.12", dict(GOOD))
    assert _plan(options, _facts(kernel))[1].kernel_version == "6.12"
    esp = Partition(device="/dev/sda15", number=15, start=4 << 30, size=124 << 20, fs_type="vfat", uuid="e",
                    label="", gpt_type="", gpt_guid="", name="")
    refused = [(replace(_facts(kernel), init_system="mkinitcpio"), "image.initrd_generator", "mkinitcpio"),
               (replace(_facts(kernel), init_system="dracut", systemd=False), "image.initrd_generator", "without"),
               (replace(_facts(kernel), partitions=[_facts().root, esp]), "image.root", "last one")]
    for facts, field, words in refused:
        with pytest.raises(SnpError, match=words) as info:
            _plan(options, facts)
        assert info.value.field == field


def test_measured_cmdline(params: dict) -> None:
    options = options_from({**params, "extra_cmdline": "panic=-1"})
    assert measured_cmdline(_facts(), options) == "root=/dev/mapper/root ro console=ttyS0 ip=dhcp panic=-1"


def test_verity_options_need_no_server_and_no_key(params: dict) -> None:
    params.update(mode="verity", ingestion_public_key=None, server_url=None, server_ca_file=None)
    options = options_from(params)
    assert options.mode == "verity"
    verity = verity_cmdline("ab" * 32, "1B0F1C74-AAAA-4BBB-8CCC-0123456789AB", 3 << 30)
    assert measured_cmdline(_facts(), options, verity) == (
        f"root=/dev/mapper/root ro console=ttyS0 snpguard.verity.roothash={'ab' * 32} "
        "snpguard.verity.data=PARTUUID=1b0f1c74-aaaa-4bbb-8ccc-0123456789ab "
        f"snpguard.verity.hashoffset={3 << 30}")  # no ip=dhcp: nothing is fetched at boot


@given(disk_mib=st.integers(min_value=8, max_value=1 << 22), start_mib=st.integers(min_value=1, max_value=64),
       mode=st.sampled_from(["luks", "verity"]))
def test_the_new_disk_holds_the_root_and_what_its_mode_adds(disk_mib: int, start_mib: int, mode: str) -> None:
    """The new disk is sized before inspection, from the stock disk alone: whatever the root partition is,
    it fits with its LUKS2 header or its hash tree (and the backup GPT) behind it."""
    disk = disk_mib << 20
    start = min(start_mib << 20, disk // 2)
    root = disk - start - (1 << 20)  # the largest root the stock disk can hold (its backup GPT after it)
    options = ConvertOptions(source="s", output="o", staging_dir="d", name="n", firmware="f", agent_url="",
                             agent_ca_file="", mode=mode)
    room = output_size(options, disk) - start - 34 * 512
    need = root + (16 << 20 if mode == "luks" else verity_hash_size(root))
    assert room >= need


def test_a_source_qemu_img_cannot_read_is_refused_and_leaves_nothing(params: dict, tmp_path: Path) -> None:
    """The new disk is made from the source's virtual size: a source that is no qcow2 stops there, naming
    the source, and neither the output nor a staging dir (nor their temporary names) is left."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SnpError) as refused:
        convert(options_from(params), run)
    assert refused.value.field == "source"
    assert "qemu-img info" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 16384, 16385, 100000])
def test_verity_hash_size_is_what_veritysetup_appends(tmp_path: Path, blocks: int) -> None:
    """The disk grows by the hash tree: veritysetup (format needs no device mapper) is the oracle."""
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup is not installed (cryptsetup-bin)")
    data = tmp_path / "data"
    with open(data, "wb") as handle:
        handle.truncate(blocks * 4096)
    subprocess.run(["veritysetup", "format", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
                    f"--data-blocks={blocks}", f"--hash-offset={blocks * 4096}", str(data), str(data)],
                   check=True, capture_output=True)
    assert data.stat().st_size - blocks * 4096 == verity_hash_size(blocks * 4096)


def test_dracut_images_get_their_network_from_the_initrd_and_no_passphrase_prompt(params: dict) -> None:
    options = options_from(params)
    facts = replace(_facts(), init_system="dracut")
    assert measured_cmdline(facts, options) == "root=/dev/mapper/root ro console=ttyS0 rd.luks=0"
    assert packages_for(facts, "luks") == ["cryptsetup-bin", "python3-cffi-backend", "dracut-network"]
    assert packages_for(facts, "verity") == ["cryptsetup-bin"]
    assert packages_for(_facts(), "luks") == ["cryptsetup-bin", "python3-cffi-backend"]
    assert initrd_command(facts, "luks", "6.12", "/boot/initrd.img-6.12") == [
        "dracut", "--force", "--no-hostonly", "--add", "snpguard-agent", "/boot/initrd.img-6.12", "6.12"]
    assert initrd_command(facts, "verity", "6.12", "/boot/initrd.img-6.12")[4] == "snpguard-verity"
    assert initrd_command(_facts(), "luks", "6.12", "/boot/initrd.img-6.12") == [
        "update-initramfs", "-u", "-k", "6.12"]


STOCK_TABLE = """label: gpt
label-id: 1B2C3D4E-0000-4000-8000-000000000001
device: /dev/sda
unit: sectors
first-lba: 34
last-lba: 6291422
sector-size: 512

/dev/sda1 : start=      262144, size=     6029279, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=AAAA0000-0000-4000-8000-000000000001
/dev/sda14 : start=        2048, size=        6144, type=21686148-6449-6E6F-744E-656564454649, uuid=AAAA0000-0000-4000-8000-000000000014
/dev/sda15 : start=        8192, size=      253952, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=AAAA0000-0000-4000-8000-000000000015, name="EFI, system", attrs="LegacyBIOSBootable"
"""  # noqa: E501


def test_the_new_partition_table_is_the_stock_one_with_a_larger_root() -> None:
    table = gpt_script(STOCK_TABLE, 1, 262144, 6422527)
    lines = table.splitlines()
    assert "label-id: 1B2C3D4E-0000-4000-8000-000000000001" in lines  # the disk GUID is kept
    assert not any(line.startswith(("device:", "last-lba:")) for line in lines)  # sfdisk sizes the new disk
    assert ("/dev/sdb1 : start=      262144, size=6160384, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, "
            "uuid=AAAA0000-0000-4000-8000-000000000001") in lines
    assert ('/dev/sdb15 : start=        8192, size=      253952, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, '
            'uuid=AAAA0000-0000-4000-8000-000000000015, name="EFI, system", attrs="LegacyBIOSBootable"') in lines


def test_the_new_partition_table_is_written_by_sfdisk_as_given(tmp_path: Path) -> None:
    """sfdisk itself (no device needed for a file) reads our script back to the same partitions."""
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk is not installed")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as handle:
        handle.truncate(6422528 * 512 + (1 << 20))
    script = gpt_script(STOCK_TABLE, 1, 262144, 6422527).replace("/dev/sdb", str(disk))
    subprocess.run(["sfdisk", "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    dump = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "label-id: 1B2C3D4E-0000-4000-8000-000000000001" in dump
    assert re.search(r"1 : start=\s*262144, size=\s*6160384, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", dump), dump
    assert 'name="EFI, system"' in dump and "LegacyBIOSBootable" in dump


@pytest.mark.parametrize(("table", "root", "start", "field"), [
    (STOCK_TABLE.replace("label: gpt", "label: dos"), 1, 262144, "image.partition_table"),
    (STOCK_TABLE, 2, 262144, "image.root"),
    (STOCK_TABLE, 1, 4096, "image.root"),
])
def test_a_stock_table_that_is_not_what_inspection_saw_is_refused(table: str, root: int, start: int,
                                                                  field: str) -> None:
    with pytest.raises(SnpError) as info:
        gpt_script(table, root, start, start + 100)
    assert info.value.field == field


def test_the_new_partition_table_names_the_target_disk() -> None:
    lines = gpt_script(STOCK_TABLE, 1, 262144, 6422527, "/dev/sda").splitlines()
    assert [line.split(" : ")[0] for line in lines if " : " in line] == ["/dev/sda1", "/dev/sda14", "/dev/sda15"]


def test_two_fetches_into_one_package_cache_take_turns(tmp_path: Path) -> None:
    """Two builders on one host share the cache: apt never runs twice at once there (the CI race)."""
    import threading
    import time

    from ansible_collections.snpguard.cvm.plugins.module_utils.image.packages import fetch_debs

    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    running, overlaps, seen = [0], [], []
    guard = threading.Lock()

    def run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        with guard:
            running[0] += 1
            overlaps.append(running[0] > 1)
        status = next(a.split("=", 1)[1] for a in argv if a.startswith("-oDir::State::Status="))
        seen.append(Path(status).read_text())
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        if "-s" in argv:
            name = argv[-1]
            archives = tmp_path / "debs" / "trixie" / "cache" / "archives"
            (archives / f"{name}_1.0_amd64.deb").write_bytes(b"!<arch>\n")
            return 0, f"Inst {name} (1.0 Debian:13/trixie [amd64])\n", ""
        return 0, "", ""

    results: dict[str, list[str]] = {}

    def fetch(name: str) -> None:
        results[name] = fetch_debs([name], codename="trixie", status=f"Package: other-{name}\n",
                                   work=str(tmp_path / "debs"), run=run, mirror="http://mirror.invalid/debian",
                                   keyring=str(keyring))

    threads = [threading.Thread(target=fetch, args=(name,)) for name in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 6 and not any(overlaps)
    assert seen[:3] in ([f"Package: other-{n}\n"] * 3 for n in ("alpha", "beta"))
    assert [Path(p).name for p in results["alpha"]] == ["alpha_1.0_amd64.deb"]
    assert [Path(p).name for p in results["beta"]] == ["beta_1.0_amd64.deb"]
