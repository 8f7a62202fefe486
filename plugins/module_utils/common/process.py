# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Running a program from module_utils: the caller hands in how.

Code under module_utils must not start processes itself (in a module that is
``AnsibleModule.run_command``'s job, which logs and applies the controller's
environment), so the pieces that need QEMU take a ``Runner``: modules pass
``module_runner(module)``, the CLI, tests and benchmarks ``cli.process.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# (argv, timeout in seconds) -> (exit code, stdout, stderr); never raises for a failing program.
Runner = Callable[[Sequence[str], float], tuple[int, str, str]]


def module_runner(module: Any) -> Runner:
    """``module.run_command`` as a Runner (it has no timeout; QEMU's own start-up bounds ours)."""

    def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        rc, out, err = module.run_command(list(argv))
        return int(rc), str(out), str(err)

    return run
