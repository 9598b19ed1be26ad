"""The release ISO installs itself unattended and the installed host passes the suites: a
file of its own, so that `pytest -n 2` can run it beside the main job's boot
(tests/e2e/test_main_job.py); both read the default recipe's nodes from the test cache,
each node built once by whichever gets to its lock first."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from e2e_run import RECIPE, REPO, XENFORGE, xenforge_test

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe exported by a plain `xenforge build`."""
    if os.geteuid() != 0:
        pytest.skip("needs root (diskimage-builder, loop devices)")
    out = tmp_path_factory.mktemp("exported")
    res = subprocess.run([*XENFORGE, "build", str(RECIPE), "--plain", "-o", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=5400)
    assert res.returncode == 0, f"build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return out / "xen-host"


def test_the_iso_installs_unattended_and_the_installed_host_passes(exported: Path,
                                                                  tmp_path: Path) -> None:
    """`xenforge test --install`: the ISO installs itself onto an empty virtio disk under
    OVMF (a seed disk gives the target, hostname, SSH key and poweroff), then that disk
    boots alone under OVMF and passes the dom0 suite, which sees its three guests started
    at boot (their life cycle is the main job's, on the same guest disks)."""
    stdout, cases = xenforge_test(exported, tmp_path, "install", "--firmware", "uefi")
    assert re.search(r"installed in \d+s: XENFORGE-INSTALL-DONE target=/dev/vda", stdout), \
        stdout
    assert "firmware=uefi" in stdout
    assert "passed, 0 failed" in stdout
    assert any("the_machine_is_the_one_booted" in c for c in cases), cases
    assert any("the_guests_it_autostarts_run" in c for c in cases), cases
    assert not any(c.startswith("test_guest_lifecycle") for c in cases), cases
