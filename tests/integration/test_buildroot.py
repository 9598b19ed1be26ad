"""The default recipe's buildroot (a debootstrapped chroot of its target release) and the
sandbox the compile stages run their commands in: the target's compiler and libraries, not
the host's; a program the buildroot lacks is an error naming the Debian package to add,
whatever the host has installed; nothing stays mounted afterwards."""

from __future__ import annotations

import os
import re
from pathlib import Path

import _xenbuild as xb
import pytest
import yaml
from stagectx import stage_context

from xenforge.core.errors import CommandFailed, InputError
from xenforge.core.sandbox import Sandbox
from xenforge.stages.base import StageContext

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def buildroot() -> xb.Built:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap)")
    return xb.buildroot(xb.test_cache())


def _ctx(tmp_path: Path, root: Path) -> StageContext:
    """A stage's context with the buildroot's sandbox, as the executor gives it."""
    ctx = stage_context(tmp_path, node="test:buildroot", options=None)
    ctx.sandbox = Sandbox(root=root, release=f"debian/{xb.RELEASE}", writable=[ctx.work])
    ctx.sandbox.check_paths()
    return ctx


def test_the_buildroot_is_the_target_release(buildroot: xb.Built) -> None:
    root = buildroot.out / "root"
    os_release = (root / "etc" / "os-release").read_text()
    assert f"VERSION_CODENAME={xb.RELEASE}" in os_release
    installed = xb.read_json(buildroot.out / "buildroot.json")["packages"]
    release = yaml.safe_load((xb.REPO / "releases" / f"debian-{xb.RELEASE}.yaml").read_text())
    for want in ("gcc", "make", "dpkg-dev", "debhelper", *release["buildroot"]["packages"]):
        assert want in installed, f"{want} not in the buildroot"


def test_commands_run_with_the_targets_toolchain(buildroot: xb.Built, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, buildroot.out / "root")
    out = ctx.run(["sh", "-c", "gcc -dumpfullversion; ldd --version | head -n1; "
                   ". /etc/os-release; echo $VERSION_CODENAME"], capture=True).stdout
    gcc, libc, codename = out.split("\n")[:3]
    installed = xb.read_json(buildroot.out / "buildroot.json")["packages"]
    assert codename == xb.RELEASE
    glibc = re.search(r"(\d+\.\d+)\s*$", libc)
    assert glibc and installed["libc6"].startswith(glibc.group(1)), (libc, installed["libc6"])
    gccs = [n.split("-")[1] for n in installed if re.fullmatch(r"gcc-\d+", n)]
    assert gcc.split(".")[0] in gccs, (gcc, gccs)
    # the sandbox has no network, and its root is read-only
    res = ctx.run(["sh", "-c", "touch /usr/x 2>/dev/null && echo rw || echo ro; "
                   "cat /proc/net/dev | grep -c ':'"], capture=True).stdout.split()
    assert res == ["ro", "1"], res  # only the loopback interface
    mounts = Path("/proc/mounts").read_text()
    assert str(buildroot.out) not in mounts, "the buildroot is still mounted on the host"


def test_a_program_the_buildroot_lacks_fails_naming_its_package(buildroot: xb.Built,
                                                                tmp_path: Path) -> None:
    """qemu-img is on every xenforge host (qemu-utils) and in no buildroot: the result must
    not depend on the host."""
    ctx = _ctx(tmp_path, buildroot.out / "root")
    with pytest.raises(InputError) as exc:
        ctx.run(["qemu-img", "--version"])
    text = exc.value.render()
    assert f"the buildroot (debian/{xb.RELEASE}) has no `qemu-img`" in text
    assert "the Debian package qemu-utils" in exc.value.hint
    assert f"releases/debian-{xb.RELEASE}.yaml" in exc.value.hint
    # the same program called from a script in the buildroot (make, a configure check)
    with pytest.raises(CommandFailed) as failed:
        ctx.run(["sh", "-c", "qemu-img --version"])
    assert "lacks `qemu-img`" in str(failed.value.hint)
    assert "qemu-utils" in str(failed.value.hint)
