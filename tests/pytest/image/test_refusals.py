# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Every way a luks VM must not get its key, each refused by the server naming the check.

The session's luks image (registered by register.yml on two replicas on PostgreSQL, with server-made ID
blocks and its bundle's HOST_DATA bound) is launched from its bundle - changed the way an attacker or a
mistake would change it - under a simulated SEV-SNP launch; its agent attests to a replica and the VM
must power itself off with the server's refusal on its console, the root never opened:

* the initrd changed after registration (bytes appended; no ID block, which the AMD-SP would refuse):
  ``measurement``; the command line changed: ``measurement``;
* another HOST_DATA than the registration binds: ``host_data``;
* an ID block for this very launch signed with another ID key: ``id_key_digest``;
* (registered without ID blocks and with a minimum TCB above the platform's) a launch with the debug
  policy bit: ``policy.debug``, and the untouched launch: ``min_tcb.*``;
* the image disabled: ``image.disabled``.

At the protocol level, against the same replicas: a verify request replayed, to the replica that
answered it and to the other: ``session.replayed``; and ``register.yml`` with the pipeline's API token
revoked fails naming ``token_revoked``.  The registration is restored at the end (register.yml).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conversions import console, need_tools
from pipeline import LUKS, Pipeline
from servers import GUEST_SERVER, Agent

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import bundle_host_data
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu import simulation
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, VmConfig, from_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.crypto_guard import ec
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import (
    ID_AUTH_SIZE,
    ID_BLOCK_SIZE,
    IdAuth,
    IdBlock,
    decode_blob,
)

pytestmark = pytest.mark.slow
DEBUG_BIT = 1 << 19
REFUSAL = re.compile(r"REFUSED by \S+: check (\S+):")
DEADLINE = 900.0


def admin_images(replicas: Any) -> dict[str, Any]:
    with replicas.a.client(replicas.token) as admin:
        return {i["name"]: i for i in admin.get("/images").json()["items"]}


def bundle_of(replicas: Any, work: Path) -> Path:
    image = admin_images(replicas)[LUKS]
    with replicas.a.client(replicas.token) as admin:
        response = admin.get(f"/images/{image['id']}/bundle")
    assert response.status_code == 200, response.text
    path = work / f"bundle-{image['bundle_sha256'][:12]}.tar.gz"
    path.write_bytes(response.content)
    return path


def launch(pipeline: Pipeline, bundle: Path, work: Path, name: str, replica_port: int) -> VmConfig:
    overlay = work / f"{name}.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(pipeline.image_path(LUKS)),
         str(overlay)], 120)
    return from_bundle(str(bundle), name=name, state_dir=str(work / name), firmware=str(pipeline.firmware),
                       memory_mb=1536, simulate=True, disks=[Disk(str(overlay), format="qcow2")], network="user",
                       guest_forwards=[(GUEST_SERVER[0], GUEST_SERVER[1], replica_port)])


def boot_all(configs: dict[str, VmConfig], sim_dir: Path) -> dict[str, str]:
    """Launch every config at once; each console once its agent is refused or released (or the VM is gone)."""
    out: dict[str, str] = {}
    errors: dict[str, BaseException] = {}

    def one(name: str, config: VmConfig) -> None:
        try:
            boot_one(name, config)
        except BaseException as exc:  # raised again in the test's thread below
            errors[name] = exc

    def boot_one(name: str, config: VmConfig) -> None:
        vm = Vm(config.name, config.state_dir, run)
        serial = Path(config.state_dir) / "serial.log"
        try:
            vm.start(config.validate(), simulated_amdsp=str(sim_dir))
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                text = console(serial)
                if "powering off" in text or "key released" in text or vm.pid() is None:
                    time.sleep(2)
                    break
                time.sleep(1)
            out[name] = console(serial)
        finally:
            vm.remove()

    threads = [threading.Thread(target=one, args=item) for item in configs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, exc in errors.items():
        raise AssertionError(f"the {name} VM could not be booted: {exc!r}") from exc
    return out


def refused_check(text: str) -> str | None:
    found = REFUSAL.findall(text)
    return found[-1] if found else None


def foreign_id_block(config: VmConfig) -> tuple[str, str]:
    """The bundle's own ID block (this launch's measurement and policy) signed with a key nobody registered."""
    block = IdBlock.from_bytes(decode_blob(config.id_block, ID_BLOCK_SIZE, "id_block"))
    auth = IdAuth.build(block, ec.generate_private_key(ec.SECP384R1()))
    assert IdAuth.from_bytes(decode_blob(config.id_auth, ID_AUTH_SIZE, "id_auth")).id_key_digest != auth.id_key_digest
    return block.to_b64(), auth.to_b64()


def test_changed_launches_are_refused_by_name_and_power_off_locked(
        pipeline: Pipeline, replicas: Any, sim_dir: Path, tmp_path: Path) -> None:
    need_tools()
    stages: dict[str, float] = {}
    bundle = bundle_of(replicas, tmp_path)
    base = launch(pipeline, bundle, tmp_path, "base", replicas.a.port)
    assert base.id_block is not None and base.host_data is not None, "register.yml registers ID blocks and HOST_DATA"
    initrd = tmp_path / "initrd-appended.img"
    initrd.write_bytes(Path(base.initrd).read_bytes() + bytes(4096))
    block, auth = foreign_id_block(base)
    # Our launcher refuses a boot chain that does not measure what the bundle says, before QEMU starts; a host
    # that changes the chain does not run that check, so the changed launches below carry no expectation.
    cmdline = replace(launch(pipeline, bundle, tmp_path, "cmdline", replicas.b.port),
                      cmdline=base.cmdline + " snpguard.tampered=1", id_block=None, id_auth=None,
                      author_key_enabled=False, expected_measurement=None)
    with pytest.raises(SnpError, match="the bundle expects") as refused:
        simulation.prepare(replace(cmdline, expected_measurement=base.expected_measurement), str(sim_dir),
                           write=False)
    assert refused.value.field == "measurement"
    cases = {
        "initrd": (replace(launch(pipeline, bundle, tmp_path, "initrd", replicas.a.port), initrd=str(initrd),
                           id_block=None, id_auth=None, author_key_enabled=False, expected_measurement=None),
                   "measurement"),
        "cmdline": (cmdline, "measurement"),
        "host-data": (replace(launch(pipeline, bundle, tmp_path, "host-data", replicas.a.port),
                              host_data=bytes(32)), "host_data"),
        "id-block": (replace(launch(pipeline, bundle, tmp_path, "id-block", replicas.b.port), id_block=block,
                             id_auth=auth, author_key_enabled=False), "id_key_digest"),
    }
    seen: dict[str, str | None] = {}
    for pair in (("initrd", "cmdline"), ("host-data", "id-block")):
        started = time.monotonic()
        texts = boot_all({name: cases[name][0] for name in pair}, sim_dir)
        stages["boot_" + "_".join(pair)] = round(time.monotonic() - started, 1)
        for name in pair:
            seen[name] = refused_check(texts[name])
            assert "opened as /dev/mapper" not in texts[name] and "key released" not in texts[name], texts[name][-3000:]
            assert "powering off" in texts[name], texts[name][-3000:]
    print(f"refused: {seen}\nstages (s): {stages}")
    assert seen == {name: check for name, (_config, check) in cases.items()}


def test_policy_tcb_and_disabled_are_refused_by_name(
        pipeline: Pipeline, replicas: Any, sim_dir: Path, tmp_path: Path) -> None:
    """Registered again without ID blocks (a debug launch could not carry the image's own) and with a minimum
    TCB no platform has; then disabled. register.yml restores the pipeline's registration afterwards."""
    need_tools()
    stages: dict[str, float] = {}
    try:
        min_tcb = {"bootloader": 0, "tee": 0, "snp": 255, "microcode": 0}  # SNP_TCB 255: no platform has it
        pipeline.must("register.yml", "-e", "pipeline_id_blocks=false", "-e", json.dumps({"pipeline_min_tcb": min_tcb}),
                      stage="register_min_tcb")
        bundle = bundle_of(replicas, tmp_path)
        debug = launch(pipeline, bundle, tmp_path, "debug", replicas.a.port)
        assert debug.id_block is None
        debug = replace(debug, policy=debug.policy | DEBUG_BIT)
        plain = launch(pipeline, bundle, tmp_path, "old-tcb", replicas.b.port)
        started = time.monotonic()
        texts = boot_all({"debug": debug, "old-tcb": plain}, sim_dir)
        stages["boot_debug_tcb"] = round(time.monotonic() - started, 1)
        assert refused_check(texts["debug"]) == "policy.debug", texts["debug"][-3000:]
        assert (refused_check(texts["old-tcb"]) or "").startswith("min_tcb."), texts["old-tcb"][-3000:]

        image = admin_images(replicas)[LUKS]
        with replicas.a.client(replicas.token) as admin:
            assert admin.post(f"/images/{image['id']}/disable").status_code == 200
        started = time.monotonic()
        texts = boot_all({"disabled": launch(pipeline, bundle, tmp_path, "disabled", replicas.a.port)}, sim_dir)
        stages["boot_disabled"] = round(time.monotonic() - started, 1)
        assert refused_check(texts["disabled"]) == "image.disabled", texts["disabled"][-3000:]
        for text in texts.values():
            assert "opened as /dev/mapper" not in text
    finally:
        with replicas.a.client(replicas.token) as admin:
            image = admin_images(replicas)[LUKS]
            admin.post(f"/images/{image['id']}/enable")
        pipeline.must("register.yml", stage="register_restore")
    assert admin_images(replicas)[LUKS]["min_tcb"] in (None, {})
    print(f"stages (s): {stages}")


def test_a_replayed_report_is_refused_on_both_replicas(pipeline: Pipeline, replicas: Any, sim: Any,
                                                       tmp_path: Path) -> None:
    bundle = bundle_of(replicas, tmp_path)
    files = read_bundle(bundle.read_bytes())
    measurement = bytes.fromhex(admin_images(replicas)[LUKS]["measurements"][0]["measurement"])
    image = admin_images(replicas)[LUKS]
    auth = IdAuth.from_bytes(decode_blob(image["measurements"][0]["id_auth"], ID_AUTH_SIZE, "id_auth"))
    with replicas.a.client() as a, replicas.b.client() as b:
        # A genuine report of this image's launch (its HOST_DATA and ID key), as its agent would send it once.
        response, key, body = Agent(sim).handshake(a, measurement, host_data=bundle_host_data(files),
                                                   id_key_digest=auth.id_key_digest)
        assert response.status_code == 200 and key is not None, response.text
        for replica in (a, b):
            again = replica.post("/attest/verify", json=body)
            assert again.status_code == 403 and again.json()["error"]["check"] == "session.replayed", again.text


def test_a_revoked_token_cannot_register(pipeline: Pipeline, replicas: Any) -> None:
    token = pipeline.token_file.read_text().strip()
    with replicas.a.client(replicas.token) as admin:
        listed = admin.get("/tokens").json()["items"]
        mine = next(t for t in listed if t["name"] == "pipeline" and t["state"] == "active")
        assert admin.delete(f"/tokens/{mine['id']}").status_code == 200
    try:
        refused = pipeline.run("register.yml", stage="register_revoked")
        assert refused.returncode != 0 and "token_revoked" in refused.output, refused.output[-4000:]
    finally:
        with replicas.a.client(replicas.token) as admin:
            response = admin.post("/tokens", json={"name": "pipeline", "scope": "operator"})
        assert response.status_code == 201, response.text
        pipeline.token_file.write_text(response.json()["token"] + "\n")
    assert token != pipeline.token_file.read_text().strip()
