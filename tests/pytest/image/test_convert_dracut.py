# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A dracut cloud image, converted (``mode: luks``), registered and booted: the agent unlocks it as a unit.

The stock Debian 13 image whose initrd dracut makes (scripts/cloud_image.py's ``dracut``
variant) goes through ``snpguard image convert`` as users run it: the converter adds
dracut-network for the initrd's network, puts ``rd.luks=0`` (and no ``ip=``) on the
measured command line and runs ``dracut --no-hostonly --add snpguard-agent`` inside the
image.  Registered from its staging dir and booted from the server's bundle under a
simulated SEV-SNP launch, the agent attests as ``snpguard-agent.service`` of dracut's
systemd initrd, opens the LUKS2 root, and systemd switches to it and reaches multi-user.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CloudImage
from conversions import convert_cli, need_tools, wait_for
from servers import GUEST_SERVER, ServerProcess, snpguard_cmd, snpguard_env, stage

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as stg
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, from_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = [pytest.mark.slow, pytest.mark.dracut_stage]
NAME = "debian13-dracut"


def test_a_dracut_image_converts_registers_and_boots_through_the_agent(
        tmp_path: Path, cloud_image_dracut: CloudImage, guest_server: ServerProcess, artifacts: Path,
        sim_dir: Path) -> None:
    need_tools()
    stages: dict[str, float] = {}
    t = time.monotonic()
    firmware = artifacts / "OVMF.amdsev.fd"
    ca = guest_server.data_dir / "tls" / "ca.pem"
    with guest_server.client() as client:
        ingestion = client.get("/public/info").json()["ingestion_public_key"]
    output, staging = tmp_path / "cvm.qcow2", tmp_path / "cvm.staging"
    proc = convert_cli([str(cloud_image_dracut.path), str(output), "--staging-dir", str(staging), "--name", NAME,
                        "--server-url", f"https://{GUEST_SERVER[0]}", "--server-ca", str(ca),
                        "--ingestion-key", ingestion, "--firmware", str(firmware), "--report-source", "channel",
                        "--package-cache", str(tmp_path.parent / "debs"), "--force-tcg", "--json"])
    print(proc.stderr[-2500:])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    t = stage(stages, "convert_dracut", t)
    result = json.loads(proc.stdout)
    assert result["image"]["initrd_generator"] == "dracut"
    assert "dracut-network" in " ".join(result["packages"])
    steps = "\n".join(result["steps"])
    assert "with dracut (inside the image)" in steps
    staged = stg.read_staging(str(staging))
    args = staged.cmdline.split()
    assert args[:2] == ["root=/dev/mapper/root", "ro"] and "rd.luks=0" in args
    assert not any(arg.startswith("ip=") for arg in args)

    token = guest_server.mint_token("convert-dracut")
    env = dict(snpguard_env(), SNPGUARD_TOKEN=token)
    registered = subprocess.run(
        snpguard_cmd("image", "register", NAME, "--staging-dir", str(staging), "--firmware", str(firmware),
                     "--url", guest_server.base, "--ca-file", str(ca), "--json"),
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert registered.returncode == 0, registered.stderr + registered.stdout
    image_id = json.loads(registered.stdout)["id"]
    with guest_server.client(token) as admin:
        response = admin.get(f"/images/{image_id}/bundle")
    assert response.status_code == 200, response.text
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(response.content)
    overlay = tmp_path / "boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(output), "-F", "qcow2", str(overlay)],
                   check=True)
    t = stage(stages, "register", t)

    config = from_bundle(str(bundle), name="dracut-converted", state_dir=str(tmp_path / "vm"),
                         firmware=str(firmware), memory_mb=2048, simulate=True,
                         disks=[Disk(str(overlay), format="qcow2")], network="user",
                         guest_forwards=[(GUEST_SERVER[0], GUEST_SERVER[1], guest_server.port)]).validate()
    vm = Vm(config.name, config.state_dir, run)
    serial = Path(config.state_dir) / "serial.log"
    try:
        assert vm.start(config, simulated_amdsp=str(sim_dir)).changed
        text = wait_for(vm, serial, re.compile(r"Reached target multi-user|stopping this boot|Kernel panic"))
        t = stage(stages, "boot_to_multi_user", t)
    finally:
        vm.remove()
    agent = [line.strip() for line in text.splitlines() if "snpguard-agent" in line and ": snpguard-agent: " in line]
    print("\n".join(agent) + f"\nstages (s): {stages}")
    assert any(f"attested, key released for {NAME}" in line for line in agent), text[-4000:]
    assert any("opened as /dev/mapper/root; key wiped" in line for line in agent), text[-4000:]
    assert "Reached target multi-user.target" in text or "Multi-User System" in text, text[-4000:]
    assert "Please enter passphrase" not in text and "Entering emergency mode" not in text
