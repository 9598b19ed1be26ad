"""The ``disk`` stage: a bootable GPT disk (BIOS and/or UEFI) around a dom0 root filesystem,
with the machine's settings and its guests - in seconds, without diskimage-builder, root,
loop devices or mounts. With ``role: guest`` the same for a guest root filesystem that
boots its own GRUB (an HVM guest's disk), without guests of its own.

Inputs: ``rootfs`` (a ``rootfs`` node of the role) and ``guests`` (a list: for each entry of
``options.guests``, the guest ``rootfs`` node whose filesystem is its disk, or the guest
``disk`` node of a guest that boots its own disk; one input may serve several guests, each
gets its own copy).

Steps:

1. copy the root filesystem (sparse) and grow it to the root partition's size
   (``resize2fs``), so the disk size is this stage's option, not diskimage-builder's;
2. write the boot settings: ``/etc/default/xenforge-boot`` gets the root partition's GUID and
   the Xen, dom0 and plain-Linux command lines, and the image's own generator
   (``xenforge-grub-config --settings-only``, from the ``xenforge-boot`` element) turns them
   into ``/boot/grub/xenforge-boot.cfg``, which the image's ``grub.cfg`` reads at boot;
3. put each guest in: ``/var/lib/xen/images/NAME/{disk.raw,vmlinuz,initrd.img}``,
   ``/etc/xen/NAME.cfg`` and, when it starts at boot, ``/etc/xen/auto/NAME.cfg``;
4. ``e2fsck -n``, then :func:`xenforge.lib.gptdisk.assemble`: the partitions, GRUB for each
   firmware, the filesystem copied in; then ``qemu-img`` for qcow2.

All file edits go through ``debugfs`` (:mod:`xenforge.lib.ext4`). Outputs: ``<name>.raw``
and/or ``<name>.qcow2``, ``access_key``(``.pub``) of the rootfs, and ``image-info.json``
(the rootfs's record plus the disk layout, firmware, command lines, guests, timings).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from xenforge.core.errors import InputError, StageFailed
from xenforge.core.files import write_json_atomic
from xenforge.lib import gptdisk
from xenforge.lib.ext4 import Edits, Ext4Image
from xenforge.lib.xl import IMAGES_DIR, UNSAFE_CMDLINE_CHARS, Guest, guest_config
from xenforge.limits import MAX_IMAGE_MIB, MIN_DISK_MIB
from xenforge.stages.base import Stage, StageContext, StageOptions

MIB = 1 << 20
#: where the xenforge-boot element keeps the settings and the generator
BOOT_SETTINGS = "/etc/default/xenforge-boot"
BOOT_VARS = "/boot/grub/xenforge-boot.cfg"
GENERATOR = "/usr/local/bin/xenforge-grub-config"
#: free room the root filesystem keeps besides its content and guests (MiB, and a share)
HEADROOM_MIB, HEADROOM_SHARE = 32, 0.10


class DiskOptions(StageOptions):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    role: Literal["dom0", "guest"] = "dom0"
    size: int = Field(ge=MIN_DISK_MIB, le=MAX_IMAGE_MIB,
                      description="MiB of the whole disk")
    formats: tuple[Literal["raw", "qcow2"], ...] = Field(min_length=1)
    firmware: tuple[Literal["bios", "uefi"], ...] = Field(min_length=1)
    esp_size: int = Field(ge=33, description="MiB of the EFI system partition")
    xen_cmdline: str
    kernel_cmdline: str = Field(description="dom0's kernel under Xen")
    linux_cmdline: str = Field(description="the kernel in the plain-Linux boot entries")
    grub_timeout: int = Field(ge=0, le=3600)
    guests: tuple[Guest, ...] = ()
    qcow2_compress: bool = False

    @field_validator("xen_cmdline", "kernel_cmdline", "linux_cmdline")
    @classmethod
    def _safe(cls, value: str) -> str:
        bad = sorted({c for c in value if c in UNSAFE_CMDLINE_CHARS or not c.isprintable()})
        if bad:
            raise ValueError(f"a command line may not contain {' '.join(map(repr, bad))}")
        return value


def root_guid(node_id: str, name: str) -> str:
    """The root partition's GPT GUID (the kernel's root=PARTUUID=), from the node id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xenforge:{node_id}:{name}:root-partition"))


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def set_shell_vars(text: str, values: dict[str, str]) -> str:
    """``KEY="value"`` lines of a shell settings file with ``values`` replacing (or added)."""
    lines = text.splitlines()
    for key, value in values.items():
        line = f'{key}="{value}"'
        for i, old in enumerate(lines):
            if re.match(rf"^{key}=", old):
                lines[i] = line
                break
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class DiskStage(Stage):
    own_job: ClassVar[bool] = True
    repro_note: ClassVar[str] = (
        "the disk holds the root filesystems (see rootfs), and qcow2 conversion keeps "
        "their layout")
    name: ClassVar[str] = "disk"
    version: ClassVar[int] = 3  # 2: no build-host path in xenforge-boot.cfg; 3: zstd qcow2
    Options: ClassVar[type[StageOptions]] = DiskOptions
    artifacts: ClassVar[tuple[str, ...]] = ("*.raw", "*.qcow2", "access_key", "access_key.pub",
                                            "image-info.json")

    def run(self, ctx: StageContext) -> None:
        opts: DiskOptions = ctx.options
        started = time.monotonic()
        src, info, guests, guest_infos = host_inputs(ctx, len(opts.guests), role=opts.role)

        layout = gptdisk.plan_layout((opts.size - gptdisk.overhead_mib(opts.firmware,
                                                                      opts.esp_size)) * MIB,
                                     opts.firmware, seed=f"{ctx.node_id}:{opts.name}",
                                     esp_mib=opts.esp_size,
                                     root_guid=root_guid(ctx.node_id, opts.name))
        root_part = layout.part("root")
        assert root_part is not None
        self._check_room(opts, info, src, guests, guest_infos, root_part.size)

        root = Ext4Image(ctx.work / "root.ext4", log=ctx.log)
        source_fs = src / info["fs"]["file"]
        with open(root.path, "wb") as f:
            f.truncate(source_fs.stat().st_size)
        gptdisk.copy_sparse(source_fs, root.path, 0)
        root.grow(root_part.size)

        edits = Edits()
        self._boot_settings(ctx, opts, root, edits, root_part.guid)
        for g, gsrc, ginfo in zip(opts.guests, guests, guest_infos, strict=True):
            add_guest(ctx, g, gsrc, ginfo, edits)
        root.apply(edits, ctx.work / "debugfs.cmds")
        root.check()

        raw = ctx.out / f"{opts.name}.raw"
        t1 = time.monotonic()
        gptdisk.assemble_layout(root.path, raw, ctx.work / "disk", layout,
                                fs_uuid=info["fs_uuid"], log=ctx.log)
        root.path.unlink()
        if "qcow2" in opts.formats:
            # zstd clusters (QEMU >= 5.1 reads them), compressed on every core: 16 s here for
            # the default dom0 disk against zlib's 53 s on one, and 2% smaller. In-order
            # writes (no -W) keep the file the same bytes whatever the core count.
            compress = ["-c", "-o", "compression_type=zstd", "-m", str(max(1, min(ctx.jobs, 8)))] \
                if opts.qcow2_compress else []
            ctx.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *compress, raw,
                     ctx.out / f"{opts.name}.qcow2"])
        if "raw" not in opts.formats:
            raw.unlink()
        for key in ("access_key", "access_key.pub"):
            if (src / key).is_file():
                os.link(src / key, ctx.out / key)

        files = {f.name: {"size": f.stat().st_size, "allocated": _allocated(f)}
                 for f in sorted(ctx.out.iterdir()) if f.suffix in (".raw", ".qcow2")}
        info.update({
            "disk_file": f"{opts.name}.raw" if "raw" in opts.formats else None,
            "formats": list(opts.formats), "firmware": list(opts.firmware),
            "disk": layout.to_json(), "root_partuuid": root_part.guid,
            "xen_cmdline": opts.xen_cmdline, "kernel_cmdline": opts.kernel_cmdline,
            "files": files,
            "guests": guest_records(opts.guests, guest_infos),
            "seconds": {**info.get("seconds", {}),
                        "disk": round(time.monotonic() - started, 1),
                        "assemble_and_convert": round(time.monotonic() - t1, 1)},
        })
        write_json_atomic(ctx.out / "image-info.json", info)
        ctx.note(f"disk {opts.name}: " + ", ".join(
            f"{f}: {v['size'] >> 20} MiB ({v['allocated'] >> 20} MiB used)"
            for f, v in files.items()))

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_room(opts: DiskOptions, info: dict[str, Any], src: Path, guests: list[Path],
                    guest_infos: list[dict[str, Any]], partition: int) -> None:
        need = int(info["fs"]["used"])
        for gsrc, ginfo in zip(guests, guest_infos, strict=True):
            need += _allocated(gsrc / guest_disk_file(ginfo))
            need += sum(_allocated(gsrc / f) for f in ("vmlinuz", "initrd.img")
                        if (gsrc / f).is_file())
        need = int(need * (1 + HEADROOM_SHARE)) + HEADROOM_MIB * MIB
        if need > partition:
            overhead = gptdisk.overhead_mib(opts.firmware, opts.esp_size) * MIB
            at_least = (need + overhead + (1 << 30) - 1) >> 30
            raise InputError(
                f"image {opts.name}: {opts.size} MiB is too small: its root filesystem needs "
                f"{need >> 20} MiB ({int(info['fs']['used']) >> 20} MiB of dom0, "
                f"{len(guests)} guest disk(s) and kernels, and headroom) in a "
                f"{partition >> 20} MiB partition",
                hint=f"raise images.{opts.name}.size to at least {at_least}G")

    @staticmethod
    def _boot_settings(ctx: StageContext, opts: DiskOptions, root: Ext4Image, edits: Edits,
                       partuuid: str) -> None:
        settings, generator = ctx.work / "xenforge-boot", ctx.work / "xenforge-grub-config"
        if not root.read(BOOT_SETTINGS, settings) or not root.read(GENERATOR, generator):
            raise StageFailed(ctx.node, f"the root filesystem has no {BOOT_SETTINGS} or "
                              f"{GENERATOR}", log=ctx.log,
                              hint="a bootable rootfs needs the xenforge-boot element")
        settings.write_text(set_shell_vars(settings.read_text(), {
            "ROOT_PARTUUID": partuuid, "XEN_CMDLINE": opts.xen_cmdline,
            "KERNEL_CMDLINE": opts.kernel_cmdline, "LINUX_CMDLINE": opts.linux_cmdline,
            "GRUB_TIMEOUT": str(opts.grub_timeout)}))
        settings.chmod(0o644)
        boot_vars = ctx.work / "xenforge-boot.cfg"
        # named as the disk knows it, not by its path on the build host
        ctx.run(["bash", generator, "--settings-only", settings, boot_vars, BOOT_SETTINGS])
        boot_vars.chmod(0o644)
        edits.write(settings, BOOT_SETTINGS, replace=True)
        edits.write(boot_vars, BOOT_VARS, replace=True)


def host_inputs(ctx: StageContext, n_guests: int, *, role: str = "dom0"
                ) -> tuple[Path, dict[str, Any], list[Path], list[dict[str, Any]]]:
    """A host's inputs (of the disk and iso stages): the dom0 rootfs and its record, and one
    guest disk (a rootfs or a guest disk node) with its record per guest of the options."""
    src = ctx.input("rootfs")
    info = read_info(ctx, src, role)
    guests = ctx.input_list("guests")
    if len(guests) != n_guests:
        raise ctx.planner_bug(f"{n_guests} guests but {len(guests)} guest inputs")
    return src, info, guests, [read_info(ctx, g, "guest") for g in guests]


def read_info(ctx: StageContext, src: Path, role: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((src / "image-info.json").read_text())
    except (OSError, ValueError) as exc:
        raise StageFailed(ctx.node, f"no image-info.json in {src}", log=ctx.log) from exc
    if info.get("role") != role:
        raise ctx.planner_bug(f"input {src} is a {info.get('role')} rootfs, not a {role}")
    return info


def guest_disk_file(info: dict[str, Any]) -> str:
    """The file of a guest input that is the guest's disk: a bootable disk's raw image, or
    the filesystem of a rootfs whose kernel dom0 starts."""
    return str(info.get("disk_file") or info["fs"]["file"])


def add_guest(ctx: StageContext, g: Guest, src: Path, info: dict[str, Any],
               edits: Edits) -> None:
    own_boot = g.type == "hvm" and g.boot == "disk"
    if own_boot != bool(info.get("disk_file")):
        raise ctx.planner_bug(f"guest {g.name} boots {'its disk' if own_boot else 'a kernel'}"
                              f" but its input {src} is {'not ' if own_boot else ''}a "
                              "bootable disk")
    if not own_boot and not (src / "vmlinuz").is_file():
        raise StageFailed(ctx.node, f"guest {g.name}: its rootfs exported no kernel "
                          "(vmlinuz)", log=ctx.log, hint="the guest needs a kernel package")
    home = f"{IMAGES_DIR}/{g.name}"
    edits.mkdir(home)
    edits.write(src / guest_disk_file(info), f"{home}/disk.raw")
    ramdisk = not own_boot and (src / "initrd.img").is_file()
    if not own_boot:
        edits.write(src / "vmlinuz", f"{home}/vmlinuz")
    if ramdisk:
        edits.write(src / "initrd.img", f"{home}/initrd.img")
    cfg = ctx.work / f"{g.name}.cfg"
    cfg.write_text(guest_config(g, ramdisk=ramdisk))
    cfg.chmod(0o644)
    edits.write(cfg, f"/etc/xen/{g.name}.cfg")
    if g.autostart:
        edits.symlink(f"/etc/xen/auto/{g.name}.cfg", f"../{g.name}.cfg")


def guest_records(guests: tuple[Guest, ...], infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a host's image-info.json says of its guests (the suites' expectations)."""
    return [{"name": g.name, "type": g.type, "memory": g.memory, "vcpus": g.vcpus,
             "autostart": g.autostart, "hostname": g.hostname, "image": gi["name"],
             "pv_drivers": g.pv_drivers if g.type == "hvm" else None,
             "boot": g.boot if g.type == "hvm" else "kernel",
             "console_log": g.console_log,
             "kernel_version": gi.get("kernel_version"),
             "os": (gi.get("os_release") or {}).get("VERSION_CODENAME")}
            for g, gi in zip(guests, infos, strict=True)]
