"""Fast checks of the Xen build pieces: option validation, fragment order, packaging data
helpers, initramfs module order, QEMU command lines. No builds, no root, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from initramfs import Initramfs
from pydantic import ValidationError

from xenforge.lib import debpkg
from xenforge.stages.hypervisor import HypervisorOptions
from xenforge.stages.toolstack import ToolstackOptions
from xenforge.stages.xen_common import build_date, xen_version
from xenforge.stages.xen_debs import TEMPLATES, XenDebsOptions, base_version, glob_regex
from xenforge.vm.qemu import Machine, argv

REPO = Path(__file__).resolve().parents[2]


def test_build_id_must_fit_xen_extraversion() -> None:
    HypervisorOptions(build_id="0123456789ab")
    with pytest.raises(ValidationError):
        HypervisorOptions(build_id="0123456789abc")  # 13 characters
    with pytest.raises(ValidationError):
        HypervisorOptions(build_id="a/b")


def test_toolstack_refuses_flags_that_download() -> None:
    ToolstackOptions(configure=("--prefix=/usr", "--disable-stubdom"))
    with pytest.raises(ValidationError, match="download"):
        ToolstackOptions(configure=("--enable-stubdom",))
    with pytest.raises(ValidationError, match="must start with"):
        ToolstackOptions(configure=("prefix=/usr",))


def test_spec_toolstack_flags_are_valid() -> None:
    spec = yaml.safe_load((REPO / "hypervisor" / "xen-4.17.yaml").read_text())
    ToolstackOptions(configure=tuple(spec["toolstack"]["configure"]))
    assert (REPO / "hypervisor" / spec["patches"] / "series").is_file()


def test_package_versions() -> None:
    assert base_version("apt:xen=4.17.5+72-g01140da4e8-1", "4.17.5") == "4.17.5+72-g01140da4e8-1"
    assert base_version("url:https://x/xen-4.17.5.tar.gz", "4.17.5") == "4.17.5-0"
    v = f"{base_version('apt:xen=4.17.5+72-g01140da4e8-1', '4.17.5')}+xenforge1~0a1b2c3d4e5f"
    assert debpkg.VERSION_RE.match(v)
    with pytest.raises(ValidationError):
        XenDebsOptions(source="git:somewhere")


def test_glob_patterns() -> None:
    assert glob_regex("usr/lib/*/*.a").match("usr/lib/x86_64-linux-gnu/libxenctrl.a")
    assert not glob_regex("usr/lib/*/*.a").match("usr/lib/x/y/z.a")
    assert glob_regex("**").match("etc/xen/scripts/vif-bridge")
    assert glob_regex("**/__pycache__/**").match("usr/lib/python3/x/__pycache__/a.pyc")
    assert glob_regex("etc/init.d/**").match("etc/init.d/xencommons")
    assert not glob_regex("etc/init.d/**").match("etc/xen/xl.conf")


def test_packaging_data_is_complete() -> None:
    data = yaml.safe_load((TEMPLATES / "packages.yaml").read_text())
    names = [p["name"] for p in data["packages"]]
    assert names == ["xenforge-xen-hypervisor", "xenforge-libxen-dev", "xenforge-xen-utils"]
    for p in data["packages"]:
        froms = {r["from"] for r in p["install"] if "from" in r}
        assert len(froms) == 1, p["name"]
        for r in p["install"]:
            if "template" in r:
                assert (TEMPLATES / r["template"]).is_file()
    for script in TEMPLATES.glob("*.post*"):
        assert script.read_text().startswith("#!/bin/sh\n"), script


def test_normalize_modes_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "usr/lib/xen/bin").mkdir(parents=True)
    (root / "usr/bin").mkdir()
    tool = root / "usr/lib/xen/bin/pygrub"
    tool.write_text("#!/usr/bin/python3\n")
    tool.chmod(0o775)
    lib = root / "usr/lib/libx.so.1.0"
    lib.write_bytes(b"\x7fELF")
    lib.chmod(0o755)
    os.symlink("/usr/lib/xen/bin/pygrub", root / "usr/bin/pygrub")
    (root / "boot").mkdir()
    (root / "boot/xen.gz").write_bytes(b"x")
    (root / "boot/xen.gz").chmod(0o755)
    debpkg.normalize(root, plain=["boot/xen.gz"])
    assert tool.stat().st_mode & 0o777 == 0o755
    assert lib.stat().st_mode & 0o777 == 0o644
    assert (root / "boot/xen.gz").stat().st_mode & 0o777 == 0o644
    assert os.readlink(root / "usr/bin/pygrub") == "../lib/xen/bin/pygrub"


def test_initramfs_modules_load_in_dependency_order(tmp_path: Path) -> None:
    base = tmp_path / "lib/modules/6.1.0-test"
    (base / "kernel/drivers/xen").mkdir(parents=True)
    for m in ("xen-privcmd", "xenfs", "xen-gntdev", "xen-front"):
        (base / f"kernel/drivers/xen/{m}.ko").write_bytes(b"ko")
    (base / "modules.dep").write_text(
        "kernel/drivers/xen/xenfs.ko: kernel/drivers/xen/xen-privcmd.ko\n"
        "kernel/drivers/xen/xen-privcmd.ko:\n"
        "kernel/drivers/xen/xen-gntdev.ko: kernel/drivers/xen/xen-front.ko\n"
        "kernel/drivers/xen/xen-front.ko:\n")
    ramfs = Initramfs(busybox=Path("/bin/sh"))
    try:
        order = ramfs.add_modules(tmp_path, "6.1.0-test", ["xenfs", "xen_gntdev"])
        assert [Path(p).name for p in order] == ["xen-privcmd.ko", "xenfs.ko",
                                                 "xen-front.ko", "xen-gntdev.ko"]
        listed = (ramfs.root / "etc/modules.order").read_text().split()
        assert listed == order
    finally:
        ramfs.close()


def test_qemu_command_line(tmp_path: Path) -> None:
    args = argv(Machine(), workdir=tmp_path, cdrom=tmp_path / "x.iso")
    joined = " ".join(args)
    assert "-cpu max,-smap,-xsave" in joined and "accel=tcg" in joined
    assert f"-serial file:{tmp_path / 'serial.log'}" in joined
    assert "-no-reboot" in args and f"-cdrom {tmp_path / 'x.iso'}" in joined


def test_xen_version_and_build_date(tmp_path: Path) -> None:
    (tmp_path / "xen").mkdir()
    (tmp_path / "xen/Makefile").write_text(
        "export XEN_VERSION       = 4\nexport XEN_SUBVERSION    = 17\n"
        "export XEN_EXTRAVERSION ?= .5$(XEN_VENDORVERSION)\n")
    assert xen_version(tmp_path) == "4.17.5"
    assert build_date(1700000000) == ("Tue Nov 14 22:13:20 UTC 2023", "22:13:20")
