"""``xenforge test --install``: install a build's ISO unattended onto an empty virtual disk
(an install seed gives the kernel parameters, see :mod:`xenforge.lib.isoseed`), wait for the
installer to power the machine off, and hand back the disk it wrote."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from xenforge.core import run as runner
from xenforge.core.errors import XenforgeError
from xenforge.lib import isoseed
from xenforge.verify.exported import BuiltIso
from xenforge.vm.session import Firmware, Session, Target

DONE = r"XENFORGE-INSTALL-DONE[^\r\n]*"
FAILED = r"XENFORGE-INSTALL-FAILED:[^\r\n]*"


@dataclass
class Installed:
    disk: Path  # the disk the installer wrote
    key: Path  # the private key whose public half the install authorised
    hostname: str
    firmware: Firmware
    seconds: float  # from power-on to power-off
    done: str  # the installer's last console line


def install(built: BuiltIso, *, workdir: Path, log: Path, firmware: Firmware,
            memory: int, cpus: int, kvm: bool, size_mib: int = 8192,
            hostname: str = "xen-installed", timeout: float = 2400) -> Installed:
    """Boot ``built`` with an empty disk (``/dev/vda``) and a seed that chooses the install
    entry with the target, a hostname, a fresh SSH key and ``poweroff``."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "installed.qcow2"
    disk.unlink(missing_ok=True)
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, f"{size_mib}M"], log=log)
    key = workdir / "install_key"
    for old in (key, key.with_suffix(".pub")):
        old.unlink(missing_ok=True)
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenforge-install",
                "-f", key], log=log)
    pubkey = key.with_suffix(".pub").read_text().strip()
    params = {"xenforge.install": "/dev/vda", "xenforge.hostname": hostname,
              "xenforge.ssh_key": pubkey, "xenforge.then": "poweroff"}
    seed = isoseed.write_seed(workdir / "seed.img", params, work=workdir, log=log)
    target = Target(iso=built.iso, firmware=firmware, memory=memory, cpus=cpus,
                    extra_disks=(disk, seed))
    start = time.monotonic()
    with Session(target, workdir=workdir / "vm", log=log, kvm=kvm,
                 lifetime=timeout + 60) as vm:
        found = vm.vm.wait_for(f"{DONE}|{FAILED}", timeout=timeout)
        if found is None or re.match(FAILED, found.group(0)):
            why = found.group(0) if found else f"no installer verdict within {timeout:.0f}s"
            raise XenforgeError(f"the unattended install failed: {why}",
                                hint=f"console log: {vm.vm.serial}")
        if not vm.vm.wait_exit(timeout=300):
            raise XenforgeError("the installer finished but the machine did not power off",
                                hint=f"console log: {vm.vm.serial}")
    return Installed(disk=disk, key=key, hostname=hostname, firmware=firmware,
                     seconds=time.monotonic() - start, done=found.group(0))
