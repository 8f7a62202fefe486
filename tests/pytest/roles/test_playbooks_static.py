# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The roles' and playbooks' contracts that need no VM.

* Every role's ``meta/argument_specs.yml`` documents exactly the defaults of ``defaults/main.yml``, with the
  same values, in every entry point that lists the variable; every public variable the pipeline's tasks use
  is documented.
* No playbook or role ever prompts (``vars_prompt``, ``pause``): they run unattended, from AWX too.
* The AWX example's job templates name playbooks the collection has, ask nothing on launch and have no
  survey; the sample inventory has the four groups the playbooks target.
* ``ansible-playbook --syntax-check`` takes every playbook with the sample inventory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLES = sorted(p.parent.parent for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))
DEVROOT = REPO / "build" / "devroot"


def _specs(role: Path) -> dict[str, dict]:
    return yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_argument_specs_document_the_defaults(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    documented: dict[str, object] = {}
    for entry, spec in _specs(role).items():
        for name, option in (spec.get("options") or {}).items():
            assert "description" in option and "type" in option, f"{role.name}:{entry}:{name}"
            if name in defaults:
                assert option.get("default") == defaults[name], f"{role.name}:{entry}:{name}"
            documented[name] = option.get("default")
    assert set(defaults) <= set(documented), f"undocumented defaults: {sorted(set(defaults) - set(documented))}"


def test_every_public_variable_the_pipeline_uses_is_documented() -> None:
    role = REPO / "roles" / "pipeline"
    used = set()
    for path in (role / "tasks").glob("*.yml"):
        used |= set(re.findall(r"\b(pipeline_[a-z_]+)\b", path.read_text()))
    used |= set(re.findall(r"\b(pipeline_[a-z_]+)\b", (role / "templates" / "user-data.j2").read_text()))
    documented = {name for spec in _specs(role).values() for name in spec.get("options") or {}}
    assert used <= documented, f"used but undocumented: {sorted(used - documented)}"


def test_nothing_prompts() -> None:
    for path in [*(REPO / "playbooks").rglob("*.yml"), *(REPO / "roles").rglob("*.yml"),
                 *(REPO / "docs" / "examples").glob("*.yml")]:
        text = path.read_text()
        assert "vars_prompt" not in text and "ansible.builtin.pause" not in text and "\n  pause:" not in text, path


def test_the_awx_example_asks_nothing_and_names_the_collection_s_playbooks() -> None:
    (play,) = yaml.safe_load((REPO / "docs" / "examples" / "awx-job-templates.yml").read_text())
    tasks = {next(k for k in task if "." in k): task for task in play["tasks"]}
    template = tasks["awx.awx.job_template"]["awx.awx.job_template"]
    assert template["survey_enabled"] is False
    assert [k for k, v in template.items() if k.startswith("ask_") and v is not False] == []
    for name in play["vars"]["snpguard_playbooks"]:
        assert (REPO / "playbooks" / f"{name}.yml").is_file(), name
    workflow = tasks["awx.awx.workflow_job_template"]["awx.awx.workflow_job_template"]
    assert workflow["survey_enabled"] is False and workflow["ask_variables_on_launch"] is False
    assert [node["identifier"] for node in workflow["workflow_nodes"]] == play["vars"]["snpguard_playbooks"]


def test_the_sample_inventory_has_the_groups_the_playbooks_target() -> None:
    inventory = yaml.safe_load((REPO / "playbooks" / "inventory" / "sample" / "hosts.yml").read_text())
    groups = set(inventory["all"]["children"])
    assert groups == {"snp_hosts", "key_release_servers", "image_builders", "cvms"}
    targets = set()
    for path in (REPO / "playbooks").glob("*.yml"):
        for play in yaml.safe_load(path.read_text()) or []:
            if "hosts" in play:
                targets |= set(str(play["hosts"]).split(":"))
    assert {"snp_hosts", "key_release_servers", "image_builders", "cvms"} <= targets


@pytest.mark.parametrize("playbook", sorted(p.name for p in (REPO / "playbooks").glob("*.yml")))
def test_syntax_check(playbook: str, tmp_path: Path) -> None:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(DEVROOT), ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_NOCOLOR="1", PYTHONPATH="")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i",
                           str(REPO / "playbooks" / "inventory" / "sample"), str(REPO / "playbooks" / playbook)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
