"""A GRUB rescue ISO that boots Xen with a dom0 kernel and initramfs (multiboot2), serial
console only: the boot tests' way to run built binaries without a disk image."""

from __future__ import annotations

import shutil
from pathlib import Path

from xenforge.core import run as runner

GRUB_CFG = """set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry '{title}' {{
    multiboot2 /boot/xen.gz {xen}
    module2 /boot/vmlinuz {dom0}
    module2 /boot/initrd.gz
}}
"""


def xen_iso(dest: Path, *, xen_gz: Path, vmlinuz: Path, initrd: Path, xen_cmdline: str,
            dom0_cmdline: str, title: str, log: Path) -> Path:
    """Write ``dest`` (BIOS and UEFI bootable, as grub-mkrescue makes it)."""
    root = dest.parent / "iso-root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "boot" / "grub").mkdir(parents=True)
    shutil.copy(xen_gz, root / "boot" / "xen.gz")
    shutil.copy(vmlinuz, root / "boot" / "vmlinuz")
    shutil.copy(initrd, root / "boot" / "initrd.gz")
    (root / "boot" / "grub" / "grub.cfg").write_text(
        GRUB_CFG.format(title=title, xen=xen_cmdline, dom0=dom0_cmdline))
    runner.run(["grub-mkrescue", "-o", dest, root], log=log, timeout=300)
    return dest
