# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The playbooks as users run them, for the image tests: an inventory of this machine and a runner.

``Pipeline`` writes an inventory with the four groups (this machine as two image builders,
``builder-a`` and ``builder-b``, so that two conversions run at once with ``--forks``; as
the SNP host; the VMs as hosts of ``cvms``) and runs ``playbooks/*.yml`` from the working
tree (ANSIBLE_COLLECTIONS_PATH=build/devroot), timing each run.  The key-release server is
not deployed by the playbooks here: the tests bring two replicas on PostgreSQL (the
"existing server" path: ``pipeline_server_url``, ``pipeline_server_ca_file``,
``pipeline_token_file``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import GUEST_SERVER, REPO

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

PLAYBOOKS = REPO / "playbooks"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
DEVROOT = REPO / "build" / "devroot"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
LUKS, VERITY = "debian13-luks", "debian13-verity"


@dataclass
class Run:
    playbook: str
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        return {m.group(1): dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()[1:]),
                                     strict=True)) for m in RECAP.finditer(self.output)}

    def changed(self) -> int:
        return sum(host["changed"] for host in self.recap().values())


@dataclass
class Pipeline:
    work: Path
    server_url: str
    ca_file: Path
    token_file: Path
    simulated_amdsp: Path
    firmware: Path
    images: list[dict[str, Any]]
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        return self.work / "inventory.yml"

    @property
    def hosts_dir(self) -> Path:
        return self.work / "hosts"

    @property
    def controller_dir(self) -> Path:
        return self.work / "controller"

    def image_path(self, name: str) -> Path:
        return self.hosts_dir / "images" / f"{name}.qcow2"

    def staging(self, name: str) -> Path:
        return self.hosts_dir / "images" / f"{name}.staging"

    def vm_dir(self, vm: str) -> Path:
        return self.hosts_dir / "vms" / vm

    def add_vm(self, name: str, image: str, ssh_port: int, replica_port: int, **extra: Any) -> None:
        self.vms[name] = {"pipeline_vm_image": image, "pipeline_vm_ssh_port": ssh_port,
                          "pipeline_vm_guest_forwards": [f"{GUEST_SERVER[0]}:{GUEST_SERVER[1]}-{replica_port}"],
                          **extra}
        self.write_inventory()

    def write_inventory(self) -> None:
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory = {"all": {
            "children": {
                "snp_hosts": {"hosts": {"localhost": local}},
                "image_builders": {"hosts": {"builder-a": local, "builder-b": local}},
                "cvms": {"hosts": self.vms, "vars": {
                    "ansible_host": "127.0.0.1", "ansible_port": "{{ pipeline_vm_ssh_port }}",
                    "ansible_user": "{{ pipeline_ssh_user }}",
                    "ansible_ssh_private_key_file": "{{ pipeline_ssh_key }}",
                    "ansible_ssh_common_args": "-o UserKnownHostsFile={{ pipeline_known_hosts }} "
                                               "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
                    "ansible_python_interpreter": "/usr/bin/python3"}},
            },
            "vars": {
                "pipeline_images": self.images, "pipeline_work_dir": str(self.hosts_dir),
                "pipeline_controller_dir": str(self.controller_dir), "pipeline_server_url": self.server_url,
                "pipeline_server_ca_file": str(self.ca_file), "pipeline_token_file": str(self.token_file),
                "pipeline_agent_url": f"https://{GUEST_SERVER[0]}", "pipeline_firmware": str(self.firmware),
                "pipeline_simulate": True, "pipeline_simulated_amdsp": str(self.simulated_amdsp),
                "pipeline_report_source": "channel", "pipeline_force_tcg": True,
                "pipeline_secret": "the pipeline test's secret", "pipeline_vm_wait_timeout": 1200,
                # The cvms' connection variables name these; outside the role (ad-hoc commands) its defaults
                # do not exist, so the inventory sets them, as the sample's group_vars do.
                "pipeline_ssh_user": "debian", "pipeline_ssh_key": str(self.controller_dir / "ssh" / "id_ed25519"),
                "pipeline_known_hosts": str(self.controller_dir / "known_hosts"),
            }}}
        self.work.mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(json.dumps(inventory, indent=1))  # JSON is YAML

    def run(self, playbook: str, *args: str, timeout: float = 3600, stage: str | None = None) -> Run:
        env = {"ANSIBLE_COLLECTIONS_PATH": str(DEVROOT), "ANSIBLE_HOME": str(self.work / "ansible-home"),
               "ANSIBLE_LOCAL_TEMP": str(self.work / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_LOCALHOST_WARNING": "0",
               "ANSIBLE_HOST_KEY_CHECKING": "True", "PYTHONPATH": "", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(Path.home()), "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
               "LANG": "C.UTF-8"}
        started = time.monotonic()
        proc = subprocess.run([str(PLAYBOOK_BIN), "-i", str(self.inventory), str(PLAYBOOKS / playbook), *args],
                              env=env, cwd=self.work, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = round(time.monotonic() - started, 1)
        self.times[stage or playbook] = seconds
        print(f"stage {stage or playbook}: {seconds} s", flush=True)
        return Run(playbook, proc.returncode, proc.stdout + proc.stderr, seconds)

    def must(self, playbook: str, *args: str, stage: str | None = None, timeout: float = 3600) -> Run:
        result = self.run(playbook, *args, stage=stage, timeout=timeout)
        assert result.returncode == 0, f"{playbook} failed:\n{result.output[-8000:]}"
        return result

    def stop(self, *vms: str) -> None:
        for vm in vms:
            Vm(vm, str(self.vm_dir(vm)), run).remove()

    def serial(self, vm: str) -> Path:
        return self.vm_dir(vm) / "serial.log"

    def wait_active(self, vm: str, unit: str, timeout: float = 600) -> str:
        """``systemctl is-active UNIT`` on the VM over SSH (the controller's key, as boot.yml seeded it) until it
        says ``active``, or at the deadline; what it said last.  The VM's own word: under TCG on a loaded host the
        serial console can fall minutes behind the guest (its UART starved), so the console is not asked."""
        argv = ["ssh", "-i", str(self.controller_dir / "ssh" / "id_ed25519"), "-p",
                str(self.vms[vm]["pipeline_vm_ssh_port"]), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30",
                "-o", "LogLevel=ERROR", "debian@127.0.0.1", "systemctl", "is-active", unit]
        end = time.monotonic() + timeout
        said = ""
        while time.monotonic() < end:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            said = (proc.stdout.strip() or proc.stderr.strip())
            if said == "active":
                break
            time.sleep(5)
        return said
