# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Helpers of the packaging tests: commands, a clean environment, a copy of the checkout, fresh venvs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BASE_PYTHON = Path("/usr/bin/python3")

#: Files that must never reach the Galaxy tarball, planted into the copy it is built from.
PLANTED = (
    "dist/snpguard_cvm-0.1.0-py3-none-any.whl",
    "build/lib/stray.py",
    "tests/output/junit/stray.xml",
    "bench/results/measure.json",
    ".github/workflows/ci.yml",
    ".gitlab-ci.yml",
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/0.6/stray",
    ".hypothesis/examples/stray",
    ".mypy_cache/stray.json",
    "plugins/modules/__pycache__/snp_measure.cpython-311.pyc",
    "snpguard-cvm-0.0.1.tar.gz",
    ".venv/bin/python",
    "scripts/stray.sh",
)


def run(argv: list[str], cwd: Path | None = None, timeout: int = 900, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env, check=False)
    if check:
        assert result.returncode == 0, (f"{argv} failed ({result.returncode}):\n"
                                        f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could lend the working tree or the test venv to a child."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def git_listed_copy(dest: Path) -> Path:
    """The git-listed files (tracked and new, not ignored) of the checkout, copied to ``dest``."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


class Venv:
    """A fresh virtual environment: its python, its console scripts, and pip install."""

    def __init__(self, path: Path) -> None:
        self.path = path
        run([BASE_PYTHON, "-m", "venv", path], env=clean_env())

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def pip_install(self, *args: str | Path) -> None:
        run([self.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args], env=clean_env())

    def run(self, *argv: str | Path, cwd: Path | None = None, check: bool = True,
            **extra_env: str) -> subprocess.CompletedProcess:
        return run(list(argv), cwd=cwd, env=clean_env(**extra_env), check=check)

    def can_import(self, module: str) -> bool:
        return self.run(self.python, "-c", f"import {module}", check=False).returncode == 0
