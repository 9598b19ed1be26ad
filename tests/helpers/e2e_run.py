"""What the end-to-end tests (tests/e2e/) share: the repository's default recipe, the test
cache, the xenforge command on it, `xenforge test` of an export, and the QEMUs of a VM
session. Each test file is one unit of work for pytest-xdist (``--dist loadfile``), so the
main job and the unattended install are two files that run side by side."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from xenforge.cache.state import StateDir

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "xen-host.yaml"
CACHE = Path(os.environ.get("XENFORGE_TEST_CACHE", "/var/tmp/xenforge-test-cache"))
XENFORGE = [str(REPO / ".venv" / "bin" / "xenforge"), "--cache-dir", str(CACHE)]


def qemus(name: str = "xen-host") -> list[str]:
    """The QEMUs of the VM session ``name`` (files in its run dir of the test cache's state:
    ``xen-host`` for the disk, ``xen-host-iso``/``-install`` for `xenforge test --iso`/
    ``--install``); the other tests of the run (another xdist worker) boot their own."""
    run = f"{StateDir.for_cache(CACHE).run_dir(name)}/"
    out = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if run in ln]


def xenforge_test(out_dir: Path, tmp_path: Path, medium: str, *args: str
                  ) -> tuple[str, set[str]]:
    """`xenforge test --MEDIUM` of the export ``out_dir``: its stdout and JUnit case names."""
    res = subprocess.run([*XENFORGE, "test", str(RECIPE), "-o", str(out_dir.parent),
                          "--junit", str(tmp_path / "junit.xml"), f"--{medium}", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    print(res.stdout[-3000:])
    assert res.returncode == 0, f"xenforge test {args} failed:\n{res.stdout}\n{res.stderr}"
    assert not qemus(f"xen-host-{medium}"), \
        f"a QEMU is still running after xenforge test --{medium}"
    cases = {c.get("name", "") for c in ET.parse(tmp_path / "junit.xml").getroot()
             .iter("testcase")}
    return res.stdout, cases
