# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The format layer stays pure: ``snp/`` takes bytes and returns objects.

No file, thread, process or network access, no Ansible, nothing imported from above it
(``module_utils`` packages, the server, the CLI).  Checked on the source, so a new
``open()`` or ``import threading`` fails here before anyone relies on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SNP = Path(__file__).resolve().parents[5] / "plugins" / "module_utils" / "snp"
FORBIDDEN_MODULES = {"threading", "concurrent", "subprocess", "socket", "urllib", "http", "mmap", "shutil",
                     "tempfile", "ansible", "multiprocessing", "asyncio", "fcntl", "select"}
FORBIDDEN_CALLS = {"open"}
FORBIDDEN_OS = {"open", "read", "write", "listdir", "stat", "fstat", "makedirs", "replace", "rename", "unlink",
                "remove", "system", "popen", "fork", "environ", "getenv", "scandir", "walk", "chmod"}


def sources() -> list[Path]:
    return sorted(SNP.glob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_snp_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 2:
                problems.append(f"line {node.lineno}: imports from above snp/ ({'.' * node.level}{node.module})")
            elif node.level == 0 and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                problems.append(f"line {node.lineno}: {func.id}()")
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "os"
                    and func.attr in FORBIDDEN_OS):
                problems.append(f"line {node.lineno}: os.{func.attr}()")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
              and node.attr in ("environ", "path")):
            problems.append(f"line {node.lineno}: os.{node.attr}")
    assert not problems, f"{path.name} is not pure: " + "; ".join(problems)


def test_the_check_sees_every_module() -> None:
    names = {p.name for p in sources()}
    assert {"measure.py", "kds.py", "simulated_amdsp.py", "report.py"} <= names
