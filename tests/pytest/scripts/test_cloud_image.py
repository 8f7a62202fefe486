# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""scripts/cloud_image.py without building: recipe ids, identifiers, layout, manifest checks, refusals.

The build and the image itself are tested in tests/pytest/image/test_cloud_image_fixture.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cloud_image.py"
MIRROR = "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def ci():
    if "cloud_image" in sys.modules:
        return sys.modules["cloud_image"]
    spec = importlib.util.spec_from_file_location("cloud_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cloud_image"] = module
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SNPGUARD_CLOUD_IMAGE_CACHE": str(cache),
           "SNPGUARD_DEBIAN_MIRROR": MIRROR}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_recipe_id_follows_the_recipe(ci) -> None:
    base = ci.recipe(MIRROR, "initramfs-tools")
    rid = ci.recipe_id(base)
    assert rid == ci.recipe_id(json.loads(json.dumps(base)))
    assert len(rid) == 16
    changed = [
        {**base, "packages": [*base["packages"], "vim"]},
        {**base, "files": {**base["files"], "etc/hostname": "other\n"}},
        {**base, "revision": base["revision"] + 1},
        ci.recipe("http://mirror.example/debian", "initramfs-tools"),
        ci.recipe(MIRROR, "dracut"),
    ]
    ids = {ci.recipe_id(spec) for spec in changed}
    assert rid not in ids
    assert len(ids) == len(changed)


def test_variants_differ_only_in_the_initrd_generator(ci) -> None:
    tools, dracut = ci.packages("initramfs-tools"), ci.packages("dracut")
    assert set(tools) ^ set(dracut) == {"initramfs-tools", "dracut"}
    for name in ("linux-image-amd64", "systemd-sysv", "openssh-server", "cloud-init", "grub-efi-amd64"):
        assert name in tools
    assert not any("cryptsetup" in name for name in tools + dracut)
    assert 'hostonly="no"' in ci.files("dracut")["etc/dracut.conf.d/10-generic.conf"]


def test_unknown_variant_refused(ci) -> None:
    with pytest.raises(ci.CloudImageError, match="unknown variant 'suse'"):
        ci.recipe(MIRROR, "suse")


def test_identifiers_are_stable_per_recipe(ci) -> None:
    one, again, other = ci.identifiers("0123456789abcdef"), ci.identifiers("0123456789abcdef"), ci.identifiers("f" * 16)
    assert one == again
    assert all(one[key] != other[key] for key in one)
    assert len(set(one.values())) == len(one)
    assert len(one["esp_fs_uuid"]) == 9 and one["esp_fs_uuid"][4] == "-"


def test_layout_is_debians_cloud_layout(ci) -> None:
    table = {row["number"]: row for row in ci.partitions(ci.identifiers("0" * 16))}
    assert [row["number"] for row in ci.partitions(ci.identifiers("0" * 16))] == [14, 15, 1]
    assert (table[14]["start"], table[14]["end"]) == (2048, 8191)
    assert (table[15]["start"], table[15]["end"]) == (8192, 262143)
    assert (table[15]["end"] - table[15]["start"] + 1) * 512 == 124 << 20
    root = table[1]
    assert root["start"] == 262144
    assert (root["end"] + 1) % 2048 == 0
    assert root["end"] <= ci.DISK_SECTORS - 34  # before the backup GPT
    expected = ("ext4", "/", "vfat", "/boot/efi")
    assert (root["fs"], root["mountpoint"], table[15]["fs"], table[15]["mountpoint"]) == expected
    assert table[14]["fs"] is None


def test_fstab_and_esp_stub_name_the_uuids(ci) -> None:
    ids = ci.identifiers("0" * 16)
    assert f"UUID={ids['root_fs_uuid']} / ext4 " in ci.fstab(ids)
    assert f"UUID={ids['esp_fs_uuid']} /boot/efi vfat " in ci.fstab(ids)
    assert f"search.fs_uuid {ids['root_fs_uuid']} root\n" in ci.esp_grub_cfg(ids)


def test_first_cmdline(ci) -> None:
    cfg = "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.12 root=UUID=x ro console=ttyS0\n\tinitrd\t/boot/i\n}\n"
    assert ci.first_cmdline(cfg) == "root=UUID=x ro console=ttyS0"
    with pytest.raises(ci.CloudImageError, match="no linux line"):
        ci.first_cmdline("set default=0\n")


def test_incomplete_or_foreign_cache_is_not_used(ci, tmp_path: Path) -> None:
    directory = tmp_path / "img"
    directory.mkdir()
    assert ci.load_manifest(directory) is None
    (directory / "manifest.json").write_text(json.dumps({"schema": 1, "image": "image.qcow2"}))
    assert ci.load_manifest(directory) is None  # no image file
    (directory / "image.qcow2").write_bytes(b"QFI\xfb")
    assert ci.load_manifest(directory) is not None
    (directory / "manifest.json").write_text(json.dumps({"schema": 2, "image": "image.qcow2"}))
    assert ci.load_manifest(directory) is None
    (directory / "manifest.json").write_text("{not json")
    assert ci.load_manifest(directory) is None


def test_path_without_an_image_exits_1(tmp_path: Path) -> None:
    done = run_cli("path", "--variant", "dracut", cache=tmp_path / "cache")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no dracut image of the current recipe: run `cloud_image.py build --variant dracut`" in done.stderr


def test_path_prints_a_current_image(ci, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    rid = ci.recipe_id(ci.recipe(MIRROR, "initramfs-tools"))
    directory = cache / f"initramfs-tools-{rid}"
    directory.mkdir(parents=True)
    (directory / "image.qcow2").write_bytes(b"QFI\xfb")
    (directory / "manifest.json").write_text(json.dumps({"schema": 1, "image": "image.qcow2", "recipe_id": rid}))
    done = run_cli("path", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(directory / "image.qcow2")
    stale = cache / "initramfs-tools-0000000000000000"
    directory.rename(stale)
    assert run_cli("path", cache=cache).returncode == 1


def test_prune_keeps_the_newest_and_the_current(ci, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNPGUARD_CLOUD_IMAGE_CACHE", str(tmp_path))
    dirs = []
    for age in range(6):
        directory = tmp_path / f"dracut-{age:016x}"
        directory.mkdir()
        (directory / "manifest.json").write_text("{}")
        os.utime(directory / "manifest.json", (1_000_000 - age * 100, 1_000_000 - age * 100))
        dirs.append(directory)
    other = tmp_path / "initramfs-tools-0000000000000005"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    ci.prune("dracut", keep=dirs[5])  # the oldest is the one just built (e.g. its clock)
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted(
        [dirs[5].name, dirs[0].name, dirs[1].name, other.name])
