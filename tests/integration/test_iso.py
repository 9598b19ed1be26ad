"""The default recipe's ISO, really booted: live from a CD under OVMF, and the same file as a
plain disk (a USB stick) under SeaBIOS and OVMF - dom0 is the control domain, ``xl`` works,
the hypervisor is the built one. On the USB boot the installer's refusals (a missing disk,
one too small, the boot medium, a disk with partitions) leave every disk byte for byte as it
was, and a guest starts from the ISO's guest images. (The live CD under SeaBIOS with the whole
dom0 suite, and the unattended install, run in tests/e2e/test_main_job.py through
``xenforge test --iso`` / ``--install``.)

The ISO is the ``iso:xen-host`` node of the default recipe, built in the test cache through
the real planner: its rootfs is the dom0 disk's (one diskimage-builder run for both)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import _xenbuild as xb
import pytest

from xenforge.vm.session import Session, Target

pytestmark = [pytest.mark.slow, pytest.mark.root]

#: (firmware, how the ISO is attached). The two CD boots are the end-to-end tests' (`xenforge
#: test --iso` under SeaBIOS, `--install` under OVMF), so these are the USB stick's
BOOTS = [("bios", "usb"), ("uefi", "usb")]


@pytest.fixture(scope="module")
def built() -> dict[str, xb.Built]:
    nodes = xb.recipe_build(xb.test_cache(), ["iso:xen-host"])
    return {"iso": nodes["iso:xen-host"], "hypervisor": nodes["hypervisor"]}


def _iso(built: dict[str, xb.Built]) -> tuple[Path, dict[str, Any]]:
    info = xb.read_json(built["iso"].out / "iso-info.json")
    return built["iso"].out / info["iso"]["file"], info


def _ssh(vm: Session, key: Path, command: str, timeout: float = 600) -> tuple[int, str]:
    res = subprocess.run(
        ["ssh", "-p", str(vm.port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         f"{vm.target.user}@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_the_iso_is_a_hybrid_of_the_dom0_rootfs(built: dict[str, xb.Built]) -> None:
    iso, info = _iso(built)
    assert iso.name == f"xen-host-{info['iso']['file'].split('-')[-1]}"
    report = subprocess.run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain",
                             "-pvd_info"], capture_output=True, text=True, check=True)
    text = report.stdout + report.stderr
    assert "Volume Id    : XENFORGE" in text
    assert re.search(r"El Torito boot img :\s+1\s+BIOS", text) and "UEFI" in text, text
    assert "GPT" in text and "MBR" in text
    # what is on it: the built Xen, dom0 kernel + initramfs, the system, the guests
    files = info["iso"]["files"]
    for f in ("boot/xen.gz", "boot/vmlinuz", "boot/initrd.img", "live/filesystem.squashfs",
              "xenforge/install.conf", "boot/grub/grub.cfg"):
        assert f in files, f
    assert [g["name"] for g in info["guests"]] == ["guest-pvh", "guest-pv", "guest-pvhvm"]
    print(f"ISO {iso.name}: {iso.stat().st_size >> 20} MiB, system "
          f"{info['iso']['system_bytes'] >> 20} MiB, squashfs "
          f"{info['iso']['squashfs_bytes'] >> 20} MiB, built in {info['seconds']['iso']}s")


def _refusals(vm: Session, key: Path) -> None:
    """The installer refuses each bad target with its reason, writing nothing."""
    cases = {
        "/dev/vdz": "does not exist",
        "/dev/vda": "is the boot medium",
        "/dev/vdb": "is too small",
        "/dev/vdc": "holds partitions",
    }
    for target, why in cases.items():
        rc, out = _ssh(vm, key, f"sudo xenforge-install --target {target} --then none")
        assert rc == 2, f"{target}: exit {rc}: {out}"
        assert f"XENFORGE-INSTALL-FAILED: target {target} {why}" in out, out


@pytest.mark.parametrize(("firmware", "attach"), BOOTS)
def test_the_iso_boots_live(built: dict[str, xb.Built], firmware: str, attach: str,
                            tmp_path: Path) -> None:
    iso, info = _iso(built)
    hyp = xb.read_json(built["hypervisor"].out / "build-info.json")
    key = built["iso"].out / "access_key"
    extra: tuple[Path, ...] = ()
    sums: dict[str, str] = {}
    if attach == "usb":  # bad install targets: one too small, one with a partition table
        small, parted = tmp_path / "small.raw", tmp_path / "parted.raw"
        with open(small, "wb") as f:
            f.truncate(64 << 20)
        with open(parted, "wb") as f:
            f.truncate(4 << 30)
        subprocess.run(["sfdisk", "-q", str(parted)], input="label: gpt\n,1GiB,L\n",
                       text=True, check=True)
        extra = (small, parted)
        sums = {p.name: _sha256(p) for p in (iso, small, parted)}
    target = Target(disk=iso if attach == "usb" else None, iso=iso if attach == "cd" else None,
                    firmware=firmware,  # type: ignore[arg-type]
                    key=key, user=info["access_user"], extra_disks=extra,
                    ready=re.escape(info["ready_marker"]))
    with Session(target, workdir=tmp_path / "vm", log=tmp_path / "qemu.log") as vm:
        try:
            took = vm.wait_ready(1800)  # beside another worker's emulated machine
            print(f"ISO live ({firmware}, {attach}): ready after {took:.0f}s")
            rc, out = _ssh(vm, key, "cat /proc/xen/capabilities; findmnt -n -o FSTYPE /; "
                           "sudo xl list; sudo xl info")
            assert rc == 0, out
            lines = out.splitlines()
            assert lines[0] == "control_d" and lines[1] == "overlay", out
            assert re.search(r"^Domain-0\s+0\s+\d+", out, re.M), out
            assert re.search(rf"^xen_extra\s*:\s*\S*\+{hyp['build_id']}\s*$", out, re.M), out
            if attach == "usb":
                _refusals(vm, key)
                if firmware == "bios":
                    _guest_starts_live(vm, key)
        finally:
            logs = xb.test_cache().root / "test-logs"
            logs.mkdir(exist_ok=True)
            shutil.copy(vm.vm.serial, logs / f"iso-live-{firmware}-{attach}.log")
    for path in (iso, *extra):  # the medium (an overlay) and the refused disks: untouched
        if path.name in sums:
            assert _sha256(path) == sums[path.name], f"{path.name} changed"


def _guest_starts_live(vm: Session, key: Path) -> None:
    """A guest of the ISO's images starts by hand in the live system and reaches userspace."""
    rc, out = _ssh(vm, key, "ls -A /etc/xen/auto | wc -l; sudo xl list | wc -l")
    assert rc == 0 and out.split() == ["0", "2"], f"live guests should not autostart: {out}"
    rc, out = _ssh(vm, key, "sudo xenforge-live-guest guest-pv")
    assert rc == 0, out
    rc, out = _ssh(vm, key, "for i in $(seq 300); do sudo grep -a XENFORGE-GUEST-READY "
                   "/var/log/xen/console/guest-guest-pv.log && exit 0; sleep 2; done; "
                   "sudo tail -20 /var/log/xen/console/guest-guest-pv.log; exit 1", timeout=700)
    assert rc == 0, out
    assert "guest_type=PV" in out and "hostname=guest-pv" in out, out
