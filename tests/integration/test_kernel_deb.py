"""The kernel stage's linux-image .deb installs on the target release and initramfs-tools
makes an initramfs for it (in a debootstrap chroot; root only)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from _kernelbuild import dom0_kernel, kernel_tree
from _xenbuild import test_cache as _test_cache
from test_xen_build import chroot, debootstrap_tarball

from xenforge.core import run as runner

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_linux_image_deb_installs_and_gets_an_initramfs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    cache = _test_cache()
    kernel = dom0_kernel(cache, kernel_tree(cache))
    info = json.loads((kernel.out / "build-info.json").read_text())
    release = info["kernelrelease"]
    [image] = [d for d in info["debs"] if d.startswith(f"linux-image-{release}_")]

    root = tmp_path / "root"
    root.mkdir()
    runner.run(["tar", "-C", root, "-xf", debootstrap_tarball(cache)])
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    chroot(root, "apt-get", "update", "-q")
    chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
           "initramfs-tools", "zstd")
    shutil.copy(kernel.out / image, root / "tmp" / image)
    res = chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                 f"/tmp/{image}")
    status = chroot(root, "dpkg-query", "-W", "-f", "${Status}",
                    f"linux-image-{release}").stdout
    assert status == "install ok installed", res.stdout
    boot = root / "boot"
    for name in (f"vmlinuz-{release}", f"config-{release}", f"System.map-{release}"):
        assert (boot / name).is_file(), name
    # the package's postinst ran initramfs-tools' kernel hook
    initrd = boot / f"initrd.img-{release}"
    assert initrd.is_file(), res.stdout
    listing = chroot(root, "lsinitramfs", f"/boot/initrd.img-{release}").stdout
    assert re.search(r"^init$", listing, re.M), listing[:2000]
    assert re.search(rf"^(usr/)?lib/modules/{re.escape(release)}/modules\.dep$", listing, re.M)
    assert (root / "lib" / "modules" / release / "modules.dep").is_file()
    # removing it works too (and removes the initramfs it made)
    chroot(root, "apt-get", "purge", "-y", "-q", f"linux-image-{release}")
    assert not initrd.exists()
