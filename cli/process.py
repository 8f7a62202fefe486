# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The Runner (module_utils/common/process.py) for everything that is not an Ansible module."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` and capture its output; a missing program is exit 127, a timeout exit 124."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:
        return 127, "", f"cannot run {argv[0]}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]} did not finish within {timeout:g} s"
    return done.returncode, done.stdout, done.stderr
