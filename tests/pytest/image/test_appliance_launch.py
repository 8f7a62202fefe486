# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""An appliance that never comes up is killed and launched again; twice is a named error.

libguestfs' launch() waits for its appliance without a deadline (CI once waited 15 min on one that
never connected).  Here a stand-in for libguestfs' handle starts a real child process named like
QEMU (a copy of ``sleep``) and waits for it, as launch() waits for its hypervisor: the watchdog
must find it among this process's children and kill it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.image import appliance as app


class Handles:
    """A guestfs module whose first ``hangs`` launches never finish by themselves."""

    def __init__(self, qemu: Path, hangs: int) -> None:
        self.qemu, self.hangs, self.launches, self.closed = qemu, hangs, 0, 0
        outer = self

        class GuestFS:
            def __init__(self, python_return_dict: bool) -> None:
                self.drives: list[tuple[Any, ...]] = []

            def set_memsize(self, size: int) -> None:
                pass

            def set_smp(self, smp: int) -> None:
                pass

            def add_drive_opts(self, path: str, **options: Any) -> None:
                self.drives.append((path, options))

            def launch(self) -> None:
                outer.launches += 1
                child = subprocess.Popen([str(outer.qemu), "300" if outer.launches <= outer.hangs else "0"])
                if child.wait() != 0:
                    raise RuntimeError("guestfs_launch failed: child process died unexpectedly")

            def shutdown(self) -> None:
                pass

            def close(self) -> None:
                outer.closed += 1

        self.GuestFS = GuestFS


@pytest.fixture
def qemu(tmp_path: Path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
    return path


def test_a_hung_appliance_is_killed_and_launched_again(qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Handles(qemu, hangs=1)
    monkeypatch.setattr(app, "load_guestfs", lambda: fake)
    with app.appliance([("/images/a.qcow2", "qcow2", True, "source")], launch_timeout=1.0) as handle:
        assert handle.drives == [("/images/a.qcow2", {"format": "qcow2", "readonly": True, "label": "source"})]
    assert fake.launches == 2 and fake.closed == 2
    assert app._qemu_children() == set()


def test_an_appliance_that_hangs_every_time_is_a_named_error(qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Handles(qemu, hangs=app.LAUNCH_TRIES)
    monkeypatch.setattr(app, "load_guestfs", lambda: fake)
    with pytest.raises(app.ApplianceError) as info, \
            app.appliance([("/images/a.qcow2", "qcow2", True)], launch_timeout=1.0):
        pytest.fail("the appliance never came up")
    assert info.value.field == "appliance" and "did not come up within 1 s" in str(info.value)
    assert fake.launches == app.LAUNCH_TRIES and fake.closed == app.LAUNCH_TRIES


def test_a_launch_failure_that_is_not_a_hang_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    false = tmp_path / "qemu-system-x86_64"
    shutil.copy(shutil.which("false") or "/bin/false", false)
    fake = Handles(false, hangs=0)
    monkeypatch.setattr(app, "load_guestfs", lambda: fake)
    with pytest.raises(app.ApplianceError) as info, \
            app.appliance([("/images/a.qcow2", "qcow2", True)], launch_timeout=30.0):
        pytest.fail("the appliance never came up")
    assert "could not start its appliance" in str(info.value)
    assert fake.launches == 1


def test_a_drive_libguestfs_cannot_add_is_a_named_error(tmp_path: Path) -> None:
    """Real libguestfs (no launch needed): a read-only drive that is no qcow2 fails when its overlay is made."""
    pytest.importorskip("guestfs")
    bogus = tmp_path / "not-a.qcow2"
    bogus.write_bytes(b"QFI\xfb")
    with pytest.raises(app.ApplianceError) as info, app.appliance([(str(bogus), "qcow2", True)]):
        pytest.fail("a drive that is no qcow2 was added")
    assert str(bogus) in info.value.field and "qemu-img" in str(info.value)
