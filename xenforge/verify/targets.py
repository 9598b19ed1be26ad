"""``xenforge test``: boot a build's dom0 image or ISO (or take a real host), run the suites,
stop."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from xenforge.cache import Cache
from xenforge.cli.progress import Progress
from xenforge.core.errors import InputError
from xenforge.recipe.model import TestsSection
from xenforge.verify.exported import BuiltIso, expectations, find_dom0, find_iso
from xenforge.verify.install import install
from xenforge.verify.suites import Outcome, run_suites
from xenforge.vm.session import Session, Target, kvm_works


def boot_target(out: Path, *, firmware: str | None, settings: TestsSection) -> Target:
    host = find_dom0(out)
    fw = _firmware(firmware, settings, list(host.firmware), host.disk)
    return Target(disk=host.disk, firmware=fw,  # type: ignore[arg-type]
                  memory=settings.boot.memory, cpus=settings.boot.cpus, key=host.key,
                  user=host.user, kernel=_dom0_kernel(out),
                  ready=re.escape(host.info.get("ready_marker") or "") or Target.ready)


#: what ``xenforge boot`` takes as a file instead of a recipe
BOOTABLE = {".qcow2": "disk", ".raw": "disk", ".img": "disk", ".iso": "iso"}


def artifact_target(path: Path, *, firmware: str | None, settings: TestsSection) -> Target:
    """A disk image or ISO given by path. Next to a built one, its ``image-info.json``
    (``iso-info.json``) says which firmware it boots with and its ``access_key`` how to log
    in."""
    kind = BOOTABLE.get(path.suffix)
    if kind is None or not path.is_file():
        raise InputError(f"{path}: not a recipe or a bootable file",
                         hint="pass a recipe (recipes/xen-host.yaml), a disk image "
                         "(.qcow2, .raw, .img) or an ISO")
    info_file = path.parent / ("iso-info.json" if kind == "iso" else "image-info.json")
    try:
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    except ValueError:
        raise InputError(f"{info_file} is damaged (not JSON)",
                         hint="export the image again: xenforge build RECIPE") from None
    supported = (info.get("iso") or {}).get("firmware") or info.get("firmware")
    fw = _firmware(firmware, settings, list(supported or ["bios", "uefi"]), path)
    key = path.parent / "access_key"
    return Target(disk=path if kind == "disk" else None, iso=path if kind == "iso" else None,
                  firmware=fw,  # type: ignore[arg-type]
                  memory=settings.boot.memory, cpus=settings.boot.cpus,
                  key=key if key.is_file() else None,
                  user=info.get("access_user") or "root",
                  ready=re.escape(info.get("ready_marker") or "") or Target.ready)


def suite_expectations(out: Path | None, settings: TestsSection) -> dict[str, Any]:
    """What the suites check: the build's own records (when ``out`` holds a build), then
    what the recipe's ``tests:`` section adds."""
    expect = expectations(out) if out is not None and out.is_dir() else {}
    if settings.services:
        expect["services"] = list(settings.services)
    for guest in expect.get("guests", []):
        guest["boots"] = settings.boots_of(guest["name"])
    return expect


def _firmware(asked: str | None, settings: TestsSection, supported: list[str],
              disk: Path | None) -> str:
    """``--firmware`` if the image boots with it (else an error); otherwise the recipe's
    ``tests.boot.firmware`` when the image has it, else the image's first."""
    if asked is not None:
        if asked not in supported:
            raise InputError(f"{disk} does not boot with {asked} (it was built for "
                             f"{', '.join(supported)})",
                             hint=f"use --firmware {supported[0]}, or add {asked} to the "
                             "image's firmware list in the recipe and build again")
        return asked
    return settings.boot.firmware if settings.boot.firmware in supported else supported[0]


def _dom0_kernel(out: Path) -> Path | None:
    found = sorted(out.glob("kernel-*/vmlinuz"))
    return found[0] if found else None


def iso_target(out: Path, *, firmware: str | None, settings: TestsSection,
               built: BuiltIso | None = None) -> Target:
    """The ISO a build exported (``built``, when already found), booted live from a CD."""
    built = built or find_iso(out)
    fw = _firmware(firmware, settings, built.firmware, built.iso)
    return Target(iso=built.iso, firmware=fw,  # type: ignore[arg-type]
                  memory=settings.boot.memory, cpus=settings.boot.cpus, key=built.key,
                  user=built.user, kernel=_dom0_kernel(out),
                  ready=re.escape(built.info.get("ready_marker") or "") or Target.ready)


#: what ``xenforge test`` boots: the dom0 disk, the ISO live, or a disk the ISO installed
Medium = Literal["disk", "iso", "install"]


def test_built(out: Path, *, cache: Cache, progress: Progress, settings: TestsSection,
               firmware: str | None = None, junit: Path | None = None,
               medium: Medium = "disk") -> Outcome:
    """Boot what a build exported to ``out`` (its dom0 disk; its ISO live; or a disk its
    ISO installed unattended first) and run the suites against it. Each medium has its own
    VM session and logs (``xen-host``, ``xen-host-iso``, ``xen-host-install``), so the three
    tests of one build can run side by side."""
    name = out.name if medium == "disk" else f"{out.name}-{medium}"
    logs = cache.state.logs(name)
    workdir = cache.state.run_dir(name)
    expect = suite_expectations(out, settings)
    builtin = settings.builtin
    if medium == "disk":
        target = boot_target(out, firmware=firmware, settings=settings)
        expect["machine"] = {"medium": "disk", "root_fstype": "ext4"}
    else:
        built_iso = find_iso(out)
        target = iso_target(out, firmware=firmware, settings=settings, built=built_iso)
        expect["machine"] = {"medium": "live ISO", "root_fstype": "overlay"}
    kvm = kvm_works(cache.state.probes(), target.kernel, logs / "kvm-probe.log")
    accel = "KVM" if kvm else "TCG"
    start = time.monotonic()
    if medium != "disk":  # live guests start by hand; an install's are the disk's test's
        builtin = [s for s in builtin if s != "guests"]
    if medium == "install":
        assert target.iso is not None
        progress.line(f"install {target.iso.name} -> an empty disk ({target.firmware}, "
                      f"{accel})")
        done = install(built_iso, workdir=workdir / "install", log=logs / "install.log",
                       firmware=target.firmware, memory=target.memory, cpus=target.cpus,
                       kvm=kvm)
        progress.line(f"installed in {done.seconds:.0f}s: {done.done}")
        target = replace(target, iso=None, disk=done.disk, key=done.key)
        expect["machine"] = {"medium": "installed disk", "root_fstype": "ext4",
                             "hostname": done.hostname}
        # the guests the install carried: the dom0 suite sees xendomains start each one at
        # boot; their life cycle is the disk's test (the same guest disks): under
        # emulation three guests reaching userspace at once took 15 min of a 26-min test
    progress.line(f"boot   {target.disk.name if target.disk else target.iso} "
                  f"({target.firmware}, {accel})")
    verify_log = logs / "verify.log"
    verify_log.unlink(missing_ok=True)  # its last line is what `still` shows
    with progress, Session(target, workdir=workdir, log=logs / "qemu.log", kvm=kvm) as vm:
        progress.started("boot", str(workdir / "serial.log"))
        vm.wait_ready(settings.boot.timeout)
        progress.finished("boot", "ready", vm.ssh_url)
        progress.started("suites", str(verify_log))
        outcome = run_suites(vm.ssh_url, expect=expect,
                             junit=junit or out / "test-results" / "junit.xml",
                             log=verify_log, builtin=builtin,
                             extra=settings.suites, identity=target.key, throwaway_host=True)
        progress.finished("suites", "ok" if outcome.ok else "failed",
                          f"{outcome.tests} checks; stopping the VM "
                          f"({time.monotonic() - start:.0f}s since boot)")
    return outcome


def test_host(url: str, *, out: Path | None, settings: TestsSection, junit: Path,
              log: Path, identity: Path | None = None,
              known_hosts: Path | None = None) -> Outcome:
    """Run the suites against an existing machine (real hardware), booting nothing."""
    return run_suites(url, expect=suite_expectations(out, settings), junit=junit, log=log,
                      builtin=settings.builtin, extra=settings.suites, identity=identity,
                      known_hosts=known_hosts)
