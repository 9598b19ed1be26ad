"""Boot the Xen we BUILT in QEMU (TCG) with Debian's linux-image-amd64 as dom0 and a busybox
initramfs that mounts xenfs, starts xenstored and runs ``xl info``; judge from the serial log.

The hypervisor and toolstack come from the stages (cached in $XENFORGE_TEST_CACHE); the
dom0 kernel is downloaded with ``apt-get download`` into the same cache (never installed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import _xenbuild as xb
import pytest
from _bootiso import xen_iso
from initramfs import Initramfs

from xenforge.core import run as runner
from xenforge.vm.qemu import Machine, Vm

pytestmark = pytest.mark.slow

XEN_CMDLINE = "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M loglvl=all guest_loglvl=all"
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen"
DOM0_MODULES = ["xenfs", "xen-privcmd", "xen-evtchn", "xen-gntdev", "xen-gntalloc"]
TOOLS = ["usr/sbin/xl", "usr/sbin/xenstored", "usr/sbin/xenhypfs",
         "usr/bin/xenstore-ls", "usr/lib/xen/bin/xen-init-dom0"]

INIT = """#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /var/run/xen /var/run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen
echo "XENFORGE-INIT: dom0 userspace"
while read -r m; do
    insmod "$m" || echo "XENFORGE-WARN: insmod $m failed"
done < /etc/modules.order
mount -t xenfs xenfs /proc/xen
echo "XENFORGE-CAPS: $(cat /proc/xen/capabilities)"
xenstored --pid-file /var/run/xenstored.pid && echo "XENFORGE-XENSTORED: started"
xen-init-dom0 && echo "XENFORGE-INITDOM0: ok"
echo "XENFORGE-XLINFO-BEGIN"
xl info
echo "XENFORGE-XLINFO-END rc=$?"
echo "XENFORGE-HYPFS-BEGIN"
xenhypfs cat /buildinfo/config
echo "XENFORGE-HYPFS-END rc=$?"
echo "XENFORGE-DONE"
sync
poweroff -f
"""

def dom0_kernel(root: Path) -> tuple[Path, Path, str]:
    """Debian's current linux-image-amd64 kernel: (vmlinuz, extracted root, release)."""
    dep = runner.run(["apt-cache", "depends", "linux-image-amd64"], capture=True).stdout
    m = re.search(r"Depends: (linux-image-(\S+))$", dep, re.M)
    assert m, f"cannot resolve linux-image-amd64:\n{dep}"
    package, release = m.group(1), m.group(2)
    base = root / "dom0-kernel"
    tree = base / release
    vmlinuz = tree / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        base.mkdir(parents=True, exist_ok=True)
        for old in base.glob(f"{package}_*.deb"):
            old.unlink()
        runner.run(["apt-get", "download", package], cwd=base, timeout=600)
        deb = next(base.glob(f"{package}_*.deb"))
        tmp = base / f"{release}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        runner.run(["dpkg-deb", "-x", deb, tmp])
        runner.run(["depmod", "-b", tmp, release])
        tmp.rename(tree)
    return vmlinuz, tree, release


def block(text: str, begin: str, end: str) -> str:
    m = re.search(rf"{begin}\s*\n(.*?)\n[^\n]*{end}", text, re.S)
    return m.group(1) if m else ""


#: (recipe, firmware): the default stack under both firmwares, the Debian 12 stack (Xen
#: 4.17, built in its bookworm buildroot) under SeaBIOS
BOOTS = [("xen-host", "bios"), ("xen-host", "uefi"), ("xen-hypervisor-bookworm", "bios")]


def _built(recipe: str) -> dict[str, xb.Built]:
    nodes = xb.recipe_build(xb.test_cache(), ["hypervisor", "toolstack"],
                            recipe=xb.REPO / "recipes" / f"{recipe}.yaml")
    buildroot = next(b for n, b in nodes.items() if n.startswith("buildroot:"))
    return {"hypervisor": nodes["hypervisor"], "toolstack": nodes["toolstack"],
            "buildroot": buildroot}


@pytest.mark.parametrize(("recipe", "firmware"), BOOTS)
def test_built_xen_boots_dom0_and_toolstack(recipe: str, tmp_path: Path,
                                            firmware: str) -> None:
    built = _built(recipe)
    cache = xb.test_cache()
    info = xb.read_json(built["hypervisor"].out / "build-info.json")
    build_id, version = info["build_id"], info["version"]
    log = tmp_path / "boot.log"

    vmlinuz, kroot, release = dom0_kernel(cache.root)
    # the toolstack's libraries are the buildroot's (the target release's), not this host's
    ramfs = Initramfs(sysroot=built["buildroot"].out / "root")
    ramfs.add_tree_binaries(built["toolstack"].out / "install", TOOLS, log=log)
    ramfs.add_modules(kroot, release, DOM0_MODULES)
    ramfs.set_init(INIT)
    initrd = ramfs.write(tmp_path / "initrd.gz", log=log)
    iso = xen_iso(tmp_path / "smoke.iso", xen_gz=built["hypervisor"].out / "xen.gz",
                  vmlinuz=vmlinuz, initrd=initrd,
                  xen_cmdline=XEN_CMDLINE, dom0_cmdline=DOM0_CMDLINE,
                  title="xenforge smoke: built Xen + Debian dom0", log=log)

    with Vm(Machine(memory=2048, cpus=2, firmware=firmware),  # type: ignore[arg-type]
            workdir=tmp_path / "vm", log=log, timeout=900, cdrom=iso) as vm:
        done = vm.wait_for(r"XENFORGE-DONE", timeout=840)
        seconds = vm.elapsed()
    serial = vm.serial_text()
    (cache.root / "test-logs").mkdir(exist_ok=True)
    shutil.copy(vm.serial, cache.root / "test-logs" / f"xen-boot-{recipe}-{firmware}.log")
    print(f"boot of {recipe} ({firmware}) reached XENFORGE-DONE after {seconds:.0f}s")
    tail = "\n".join(serial.splitlines()[-40:])
    assert done, f"dom0 did not finish its checks; serial log tail:\n{tail}"

    # the hypervisor that booted is the one we built: its banner and the patch's line
    assert re.search(rf"Xen version {re.escape(version)}\+{build_id} ", serial), tail
    assert re.search(rf"Build tag: {build_id}\b", serial)
    # dom0 is the control domain
    assert re.search(r"XENFORGE-CAPS: control_d\b", serial)
    assert "XENFORGE-XENSTORED: started" in serial
    # the toolstack works and reports the built version
    xl = block(serial, "XENFORGE-XLINFO-BEGIN", "XENFORGE-XLINFO-END")
    assert re.search(r"XENFORGE-XLINFO-END rc=0", serial), xl or tail
    assert re.search(rf"^\s*xen_extra\s*:\s*\.[0-9a-z-]+\+{build_id}\s*$", xl, re.M), xl
    assert re.search(rf"^\s*xen_version\s*:\s*{re.escape(version)}\+{build_id}\s*$", xl, re.M)
    # the fragment's options are in the running hypervisor's configuration (hypfs)
    hypfs = block(serial, "XENFORGE-HYPFS-BEGIN", "XENFORGE-HYPFS-END")
    for line in ("CONFIG_HYPFS_CONFIG=y", "CONFIG_XHCI=y", "# CONFIG_PV32 is not set"):
        assert line in hypfs, hypfs[-2000:]
