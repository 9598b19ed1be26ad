"""The ``iso`` stage: a hybrid BIOS/UEFI live and installable ISO of a dom0 root filesystem.

Inputs: ``rootfs`` (a dom0 ``rootfs`` node built with the ``xenforge-live`` element: its
initramfs has the live boot script, its system the installer) and ``guests`` (as for the
``disk`` stage: one guest ``rootfs`` per entry of ``options.guests``, may be empty).

Steps:

1. copy the root filesystem (sparse) and put the guests in, as the ``disk`` stage does
   (``/var/lib/xen/images/NAME``, ``/etc/xen/NAME.cfg``, ``/etc/xen/auto``), with
   ``debugfs``;
2. make ``live/filesystem.squashfs`` of it (mounted read-only on a loop device, released on
   every exit path; zstd; mksquashfs takes its times from ``SOURCE_DATE_EPOCH``);
3. lay out the ISO tree: ``boot/xen.gz``, ``boot/vmlinuz``, ``boot/initrd.img`` (the rootfs's
   own), ``boot/grub/grub.cfg`` (live, install and rescue entries; serial and VGA; the
   timeout, then live), ``xenforge/install.conf`` (what the installer writes to the disk: the
   command lines of the recipe, the system's size, GRUB's modules) and ``xenforge/iso.json``;
4. ``grub-mkrescue`` (GRUB for i386-pc and x86_64-efi, the EFI El Torito image a FAT made with
   mtools, no mount) with ``xorriso``'s hybrid MBR + GPT, so the same file boots from a CD
   and written raw to a USB stick, under SeaBIOS and OVMF.

Outputs: ``<name>-<version>.iso``, ``access_key``(``.pub``) of the rootfs, and
``iso-info.json`` (the rootfs's record plus the ISO's label, firmware, menu, files with
sizes, timings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from xenforge import defaults
from xenforge.core import leftovers
from xenforge.core.errors import StageFailed
from xenforge.core.files import write_json_atomic
from xenforge.core.hashing import sha256_file
from xenforge.lib import gptdisk
from xenforge.lib.ext4 import Edits, Ext4Image
from xenforge.lib.isoseed import SEED_FILE, SEED_LABEL
from xenforge.lib.xl import Guest, safe_cmdline
from xenforge.stages.base import Stage, StageContext, StageOptions
from xenforge.stages.disk import add_guest, guest_disk_file, guest_records, host_inputs

#: the live boot script the xenforge-live element puts into the initramfs
LIVE_BOOT = "boot=xenforge-live"
#: where the installer reads its settings on the medium (xenforge-live's xenforge-install)
INSTALL_CONF = "xenforge/install.conf"

GRUB_CFG = """\
# xenforge ISO {name} {version}: live, install, rescue (serial console and screen)
set timeout={timeout}
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod all_video
insmod gzio
insmod multiboot2
if [ "$grub_platform" = efi ]; then set xf_fw=uefi; else set xf_fw=bios; fi
set xf_live='{live}'
# an install seed (a medium labelled {seed_label}, see xenforge/lib/isoseed.py) may set the
# default entry, the timeout and the install's kernel parameters (xf_auto): unattended
set xf_auto=''
if search --no-floppy --set=xf_seed --label {seed_label}; then
    if [ -f ($xf_seed)/{seed_file} ]; then source ($xf_seed)/{seed_file}; fi
fi
{entries}"""

ENTRY = """\
menuentry '{title}' --id {id} {{
    echo 'Loading Xen and the dom0 kernel ({id})...'
    multiboot2 /boot/xen.gz {xen}
    module2 /boot/vmlinuz {dom0} $xf_live xenforge.booted=$xf_fw {extra}
    module2 --nounzip /boot/initrd.img
}}
"""


class IsoOptions(StageOptions):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="the file's base name")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$",
                                description="None: YYYYMMDD of SOURCE_DATE_EPOCH")
    label: str = Field(pattern=r"^[A-Z0-9_]{1,32}$", description="ISO volume label")
    modes: tuple[Literal["live", "install"], ...] = Field(min_length=1)
    firmware: tuple[Literal["bios", "uefi"], ...] = Field(min_length=1)
    xen_cmdline: str
    kernel_cmdline: str = Field(description="dom0's kernel under Xen")
    linux_cmdline: str
    grub_timeout: int = Field(ge=0, le=3600, description="the installed system's menu")
    menu_timeout: int = Field(ge=0, le=3600, description="seconds until the ISO boots live")
    esp_size: int = Field(ge=33, description="MiB of the ESP the installer makes")
    access_user: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")
    guests: tuple[Guest, ...] = ()
    compression_level: int = Field(defaults.SQUASHFS_ZSTD_LEVEL, ge=1, le=22,
                                   description="zstd level of the squashfs")

    @field_validator("xen_cmdline", "kernel_cmdline", "linux_cmdline")
    @classmethod
    def _safe(cls, value: str) -> str:
        return safe_cmdline(value)  # written into the ISO's grub.cfg and install.conf


def with_vga(xen_cmdline: str) -> str:
    """Xen's command line with the screen added to its consoles (``console=com1,vga``)."""
    if re.search(r"(^|\s)console=\S*\bvga\b", xen_cmdline):
        return xen_cmdline
    if re.search(r"(^|\s)console=", xen_cmdline):
        return re.sub(r"(^|\s)console=(\S+)", r"\1console=\2,vga", xen_cmdline, count=1)
    return f"{xen_cmdline} console=com1,vga".strip()


def grub_cfg(opts: IsoOptions, version: str) -> str:
    xen, dom0 = with_vga(opts.xen_cmdline), opts.kernel_cmdline
    entries = []
    if "live" in opts.modes:
        entries.append(ENTRY.format(title="Xen host (live)", id="live", xen=xen, dom0=dom0,
                                    extra=""))
    if "install" in opts.modes:
        entries.append(ENTRY.format(title="Install the Xen host to a disk", id="install",
                                    xen=xen, dom0=dom0, extra="xenforge.install $xf_auto"))
    # a root shell without a password (the live system's root account is locked)
    entries.append(ENTRY.format(title="Rescue shell (live)", id="rescue", xen=xen, dom0=dom0,
                                extra="systemd.unit=rescue.target "
                                "systemd.setenv=SYSTEMD_SULOGIN_FORCE=1"))
    return GRUB_CFG.format(name=opts.name, version=version, timeout=opts.menu_timeout,
                           live=f"{LIVE_BOOT} xenforge.label={opts.label}",
                           seed_label=SEED_LABEL, seed_file=SEED_FILE,
                           entries="".join(entries)).rstrip() + "\n"


def install_conf(opts: IsoOptions, system_bytes: int, copies: dict[str, str]) -> str:
    """``copies``: guest -> the earlier guest whose disk is the same image (the installer
    reads each image once from the squashfs, then copies it on the target)."""
    values = {"SYSTEM_BYTES": str(system_bytes), "ESP_MIB": str(opts.esp_size),
              "ACCESS_USER": opts.access_user, "XEN_CMDLINE": opts.xen_cmdline,
              "KERNEL_CMDLINE": opts.kernel_cmdline, "LINUX_CMDLINE": opts.linux_cmdline,
              "GRUB_TIMEOUT": str(opts.grub_timeout),
              "GRUB_MODULES": " ".join(gptdisk.GRUB_MODULES),
              "GUEST_COPIES": " ".join(f"{dup}={first}" for dup, first in copies.items())}
    lines = ["# read by xenforge-install (the xenforge-live element); written by xenforge"]
    lines += [f'{k}="{v}"' for k, v in values.items()]
    return "\n".join(lines) + "\n"


class IsoStage(Stage):
    own_job: ClassVar[bool] = True
    repro_note: ClassVar[str] = (
        "the ISO holds the root filesystem (see rootfs) and grub-mkrescue's El Torito "
        "and FAT images, whose timestamps are not yet pinned")
    name: ClassVar[str] = "iso"
    # 3: the squashfs's zstd level is an option (default 6); 4: install.conf's GUEST_COPIES
    version: ClassVar[int] = 4
    Options: ClassVar[type[StageOptions]] = IsoOptions
    artifacts: ClassVar[tuple[str, ...]] = ("*.iso", "iso-info.json", "access_key",
                                            "access_key.pub")

    def run(self, ctx: StageContext) -> None:
        opts: IsoOptions = ctx.options
        started = time.monotonic()
        version = opts.version or time.strftime("%Y%m%d", time.gmtime(ctx.epoch))
        src, info, guests, guest_infos = host_inputs(ctx, len(opts.guests))
        xens = sorted(src.glob("xen*.gz"))
        for file in ("vmlinuz", "initrd.img"):
            if not (src / file).is_file():
                raise StageFailed(ctx.node, f"the dom0 rootfs exported no {file}", log=ctx.log,
                                  hint="a dom0 image needs its kernel package")
        if not xens:
            raise StageFailed(ctx.node, "the dom0 rootfs exported no hypervisor (xen*.gz)",
                              log=ctx.log, hint="a dom0 image needs the xen-debs packages")

        # 1. the system: the rootfs with the guests put in
        root = Ext4Image(ctx.work / "root.ext4", log=ctx.log)
        source_fs = src / info["fs"]["file"]
        with open(root.path, "wb") as f:
            f.truncate(source_fs.stat().st_size)
        gptdisk.copy_sparse(source_fs, root.path, 0)
        need = int(info["fs"]["used"]) + sum(_guest_bytes(g, gi) for g, gi in
                                              zip(guests, guest_infos, strict=True))
        root.grow(max(source_fs.stat().st_size, int(need * 1.15) + (64 << 20)))
        edits = Edits()
        first_of: dict[Path, str] = {}  # a guest image -> the first guest with it
        copies: dict[str, str] = {}
        for g, gsrc, ginfo in zip(opts.guests, guests, guest_infos, strict=True):
            add_guest(ctx, g, gsrc, ginfo, edits)
            if gsrc in first_of:
                copies[g.name] = first_of[gsrc]
            first_of.setdefault(gsrc, g.name)
        root.apply(edits, ctx.work / "debugfs.cmds")
        root.check()

        # 2. its squashfs
        tree = ctx.work / "iso"
        (tree / "live").mkdir(parents=True)
        squashfs = tree / "live" / "filesystem.squashfs"
        t1 = time.monotonic()
        mnt = ctx.work / "mnt"
        mnt.mkdir()
        with leftovers.guard(ctx.work):
            ctx.run(["mount", "-o", "ro,loop,noload", root.path, mnt])
            try:
                used = _used_bytes(mnt)
                ctx.run(["mksquashfs", mnt, squashfs, "-comp", "zstd", "-Xcompression-level",
                         str(opts.compression_level), "-noappend", "-no-progress",
                         "-processors", str(ctx.jobs)])
            finally:
                ctx.run(["umount", mnt], check=False)
        root.path.unlink()
        squash_seconds = time.monotonic() - t1

        # 3. the tree
        boot = tree / "boot"
        (boot / "grub").mkdir(parents=True)
        os.link(xens[-1], boot / "xen.gz")
        os.link(src / "vmlinuz", boot / "vmlinuz")
        os.link(src / "initrd.img", boot / "initrd.img")
        (boot / "grub" / "grub.cfg").write_text(grub_cfg(opts, version))
        (tree / "xenforge").mkdir()
        (tree / INSTALL_CONF).write_text(install_conf(opts, used, copies))
        (tree / "xenforge" / "iso.json").write_text(json.dumps({
            "name": opts.name, "version": version, "label": opts.label,
            "hypervisor": xens[-1].name, "kernel_version": info.get("kernel_version"),
            "guests": [g.name for g in opts.guests]}, indent=2) + "\n")

        # 4. the hybrid image
        iso = ctx.out / f"{opts.name}-{version}.iso"
        t2 = time.monotonic()
        ctx.run(["grub-mkrescue", *_platform_dirs(ctx, opts.firmware), "-o", iso, tree,
                 "--", "-volid", opts.label], host=True, timeout=1800)
        files = {p.relative_to(tree).as_posix(): p.stat().st_size
                 for p in sorted(tree.rglob("*")) if p.is_file()}
        info.update({
            "iso": {"file": iso.name, "size": iso.stat().st_size, "sha256": sha256_file(iso),
                    "label": opts.label, "firmware": list(opts.firmware),
                    "modes": list(opts.modes), "menu": ["live", "install", "rescue"],
                    "system_bytes": used, "squashfs_bytes": squashfs.stat().st_size,
                    "files": files},
            "xen_cmdline": with_vga(opts.xen_cmdline), "kernel_cmdline": opts.kernel_cmdline,
            "guests": guest_records(opts.guests, guest_infos),
            "seconds": {**info.get("seconds", {}), "squashfs": round(squash_seconds, 1),
                        "mkrescue": round(time.monotonic() - t2, 1),
                        "iso": round(time.monotonic() - started, 1)},
        })
        for key in ("access_key", "access_key.pub"):
            if (src / key).is_file():
                os.link(src / key, ctx.out / key)
        write_json_atomic(ctx.out / "iso-info.json", info)
        ctx.note(f"iso {iso.name}: {iso.stat().st_size >> 20} MiB (system "
                 f"{used >> 20} MiB, squashfs {squashfs.stat().st_size >> 20} MiB)")
        shutil.rmtree(tree)


def _guest_bytes(src: Path, info: dict[str, Any]) -> int:
    files = [src / guest_disk_file(info), src / "vmlinuz", src / "initrd.img"]
    return sum(f.stat().st_blocks * 512 for f in files if f.is_file())


def _used_bytes(mnt: Path) -> int:
    """Bytes the system takes on a disk (what the installer copies)."""
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _platform_dirs(ctx: StageContext, firmware: tuple[str, ...]) -> list[str]:
    """grub-mkrescue's platforms: every one installed, unless the recipe asks for fewer."""
    wanted = {"bios": "i386-pc", "uefi": "x86_64-efi"}
    missing = [f"grub-pc-bin ({fw})" if fw == "bios" else f"grub-efi-amd64-bin ({fw})"
               for fw in firmware if not (Path("/usr/lib/grub") / wanted[fw]).is_dir()]
    if missing:
        raise StageFailed(ctx.node, f"GRUB for {', '.join(missing)} is not installed",
                          log=ctx.log, hint="run ci/setup-host.sh")
    if set(firmware) == set(wanted):
        return []
    # one platform: grub-mkrescue then builds only the one of --directory
    return [f"--directory=/usr/lib/grub/{wanted[firmware[0]]}"]

