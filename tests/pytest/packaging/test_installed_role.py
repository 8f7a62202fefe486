# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server role from the collection as users install it, not from the checkout.

1. ``pip install snpguard-cvm[ansible]`` (the wheel) into a fresh venv: that venv's
   ansible-playbook finds the collection in its site-packages.
2. ``ansible-galaxy collection install`` of the Galaxy tarball into a collections path:
   ansible-playbook finds it there (site-packages scanning off, so the test venv's own copy
   cannot stand in).

Each time the role runs against this machine with its default variables except those that
keep it private (home, data directory, account, port, as in extensions/molecule/inventory.yml):
the install from PyPI at the versions of constraints-server.txt, the supervisor branch (no
systemd here), readiness over HTTPS. A second run must change nothing; the verbose output
must show that the role ran from the installed copy. Everything is removed afterwards.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from shipped import REPO, Venv, clean_env, run

pytestmark = [pytest.mark.slow]

CONVERGE = """\
- name: Converge
  hosts: all
  gather_facts: false
  roles:
    - role: snpguard.cvm.server
  post_tasks:
    - name: Keep what the role published
      ansible.builtin.copy:
        content: "{{ snpguard_server_info | to_json }}"
        dest: "{{ snpguard_test_info_file }}"
        mode: "0644"
"""

DESTROY = """\
- name: Destroy
  hosts: all
  gather_facts: false
  tasks:
    - name: Stop the supervised server
      ansible.builtin.command:
        argv: ["{{ snpguard_server_home }}/venv/bin/python", "{{ snpguard_server_home }}/bin/snpguard-supervise.py",
               "{{ snpguard_server_home }}/supervise.json", stop]
        removes: "{{ snpguard_server_home }}/supervise.json"
      failed_when: false
    - name: Remove the installation and the state
      ansible.builtin.file:
        path: "{{ snpguard_test_root }}"
        state: absent
    - name: Remove the service account
      ansible.builtin.user:
        name: "{{ snpguard_server_user }}"
        state: absent
    - name: Remove the service group
      ansible.builtin.group:
        name: "{{ snpguard_server_group }}"
        state: absent
"""


def _inventory(tmp: Path, name: str, port: int, python: Path) -> Path:
    root = Path("/var/tmp") / f"snpguard-pkgtest-{name}"
    inventory = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                 "ansible_python_interpreter": str(python)}},
                         "vars": {"snpguard_test_root": str(root),
                                  "snpguard_test_info_file": str(tmp / "info.json"),
                                  "snpguard_server_home": str(root / "opt"),
                                  "snpguard_server_data_dir": str(root / "data"),
                                  "snpguard_server_log_file": str(root / "server.log"),
                                  "snpguard_server_user": f"snpguard-pkg-{name}",
                                  "snpguard_server_group": f"snpguard-pkg-{name}",
                                  "snpguard_server_service_name": f"snpguard-pkg-{name}",
                                  "snpguard_server_listen": f"127.0.0.1:{port}",
                                  "snpguard_server_offline": True}}}
    path = tmp / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=1))
    return path


def _playbook(ansible_bin: Path, book: str, tmp: Path, inventory: Path, **env: str) -> subprocess.CompletedProcess:
    path = tmp / ("converge.yml" if book is CONVERGE else "destroy.yml")
    path.write_text(book)
    environment = clean_env(ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
                            ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_FORCE_COLOR="0", **env)
    return run([ansible_bin / "ansible-playbook", "-v", "-i", inventory, path], cwd=tmp, env=environment,
               timeout=900)


def _converge_twice(ansible_bin: Path, tmp: Path, inventory: Path, collection: Path, **env: str) -> dict:
    try:
        first = _playbook(ansible_bin, CONVERGE, tmp, inventory, **env)
        role_files = str(collection / "roles" / "server" / "files" / "make_source_archive.py")
        assert role_files in first.stdout, "the role did not run from the installed collection"
        assert str(REPO / "roles") not in first.stdout
        info = json.loads((tmp / "info.json").read_text())
        second = _playbook(ansible_bin, CONVERGE, tmp, inventory, **env)
        recap = re.search(r"localhost +: ok=\d+ +changed=(\d+) .*failed=(\d+)", second.stdout)
        assert recap and recap.groups() == ("0", "0"), second.stdout[-3000:]
        context = ssl.create_default_context(cafile=info["ca_file"])
        with urllib.request.urlopen(info["url"] + "/v1/ready", context=context, timeout=10) as answer:
            assert json.load(answer)["status"] == "ready"
        return info
    finally:
        _playbook(ansible_bin, DESTROY, tmp, inventory, **env)


def test_role_from_the_pip_installed_collection(make_venv: Callable[[str], Venv], wheel_path: Path,
                                                tmp_path: Path) -> None:
    venv = make_venv("ansible-extra")
    venv.pip_install(f"{wheel_path}[ansible]")
    site = venv.run(venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    collection = Path(site) / "ansible_collections" / "snpguard" / "cvm"
    assert (collection / "pyproject.toml").is_file() and (collection / "constraints-server.txt").is_file()
    empty = tmp_path / "no-collections"
    empty.mkdir()
    info = _converge_twice(venv.path / "bin", tmp_path, _inventory(tmp_path, "pip", 18743, venv.python), collection,
                           ANSIBLE_COLLECTIONS_PATH=str(empty))
    assert info["service_manager"] == "supervisor" and info["url"] == "https://127.0.0.1:18743"


def test_role_from_the_galaxy_installed_collection(galaxy_tarball_path: Path, tmp_path: Path) -> None:
    ansible_bin = Path(sys.executable).parent
    collections = tmp_path / "collections"
    # (--force: the copy in this venv's site-packages would otherwise count as installed already)
    run([ansible_bin / "ansible-galaxy", "collection", "install", "--offline", "--force", "-p", collections,
         galaxy_tarball_path], env=clean_env(ANSIBLE_HOME=str(tmp_path / "ansible-home"),
                                             ANSIBLE_COLLECTIONS_PATH=str(collections),
                                             ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false"))
    collection = collections / "ansible_collections" / "snpguard" / "cvm"
    assert (collection / "MANIFEST.json").is_file()
    info = _converge_twice(ansible_bin, tmp_path, _inventory(tmp_path, "galaxy", 18744, Path(sys.executable)),
                           collection, ANSIBLE_COLLECTIONS_PATH=str(collections),
                           ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
    assert info["service_manager"] == "supervisor" and info["url"] == "https://127.0.0.1:18744"
