"""Assemble a bootable GPT disk from a root filesystem image, without loop devices, mounts or
device-mapper (so it works in unprivileged CI runners and on kernels without vfat).

Layout (1 MiB aligned)::

    BIOS boot partition (1 MiB)   GRUB's i386-pc core.img, when firmware includes "bios"
    EFI system partition (FAT32)  EFI/BOOT/BOOTX64.EFI, when firmware includes "uefi"
    root partition                the ext4 image diskimage-builder made, copied in sparsely

Both GRUB images are built with ``grub-mkimage`` and an embedded early config that finds the
root filesystem by UUID and loads ``/boot/grub/grub.cfg`` from it (written inside the image by
the ``xenforge-boot`` element). The ESP is made with ``mkfs.fat -C`` and mtools; the BIOS
boot code is embedded by :func:`embed_bios_core`, which writes what ``grub-bios-setup
--no-rs-codes`` writes (checked byte for byte by a test) but needs no host block device.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

from xenforge.core.errors import XenforgeError
from xenforge.core.run import run

SECTOR = 512
MIB = 1 << 20
ALIGN = MIB
#: GPT partition type GUIDs
TYPE_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_LINUX_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

#: GRUB modules built into both images (i386-pc adds biosdisk)
GRUB_MODULES = (
    "part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid", "configfile",
    "normal", "echo", "test", "serial", "terminal", "sleep", "ls", "cat", "halt", "reboot",
    "multiboot2", "linux", "gzio", "xzio", "lzopio", "all_video", "loadenv", "minicmd",
)

# offsets in GRUB's i386-pc boot.img (include/grub/i386/pc/boot.h)
_BPB_START, _BPB_END = 0x03, 0x5A
_KERNEL_SECTOR = 0x5C
_BOOT_DRIVE = 0x64
_DRIVE_CHECK = 0x66
_NT_MAGIC, _PART_END = 0x1B8, 0x1FE
_BLOCKLIST = struct.Struct("<QHH")  # start sector, sector count, load segment
_KERNEL_SEG = 0x800


class DiskError(XenforgeError):
    """The disk could not be assembled."""


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_guid: str
    guid: str
    start: int  # bytes
    size: int  # bytes


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes
    disk_guid: str
    partitions: tuple[Partition, ...]

    def part(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "disk_guid": self.disk_guid,
                "partitions": [asdict(p) for p in self.partitions]}


def _round_up(n: int, unit: int) -> int:
    return math.ceil(n / unit) * unit


def plan_layout(root_size: int, firmware: Collection[str], *, seed: str, esp_mib: int = 64,
                root_guid: str | None = None) -> DiskLayout:
    """Where each partition goes. GUIDs derive from ``seed`` (reproducible builds)."""
    unknown = set(firmware) - {"bios", "uefi"}
    if unknown or not firmware:
        raise DiskError(f"unknown firmware {sorted(unknown)}; use bios and/or uefi")

    def guid(tag: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xenforge:{seed}:{tag}")).upper()

    parts: list[Partition] = []
    pos = ALIGN
    if "bios" in firmware:
        parts.append(Partition(len(parts) + 1, "bios", TYPE_BIOS_BOOT, guid("bios"), pos, MIB))
        pos += MIB
    if "uefi" in firmware:
        size = esp_mib * MIB
        parts.append(Partition(len(parts) + 1, "esp", TYPE_ESP, guid("esp"), pos, size))
        pos += size
    root = _round_up(root_size, ALIGN)
    parts.append(Partition(len(parts) + 1, "root", TYPE_LINUX_ROOT_X86_64,
                           (root_guid or guid("root")).upper(), pos, root))
    pos += root
    return DiskLayout(size=pos + ALIGN, disk_guid=guid("disk"), partitions=tuple(parts))


def overhead_mib(firmware: Collection[str], esp_mib: int = 64) -> int:
    """MiB of a disk that are not the root partition (alignment, GPT, BIOS boot, ESP)."""
    return 2 + (1 if "bios" in firmware else 0) + (esp_mib if "uefi" in firmware else 0)


def early_config(fs_uuid: str) -> str:
    """The config embedded in the GRUB images: find the root fs, load its grub.cfg.

    It runs before ``normal`` is active, in GRUB's rescue parser: plain commands only (an
    ``if`` here silently leaves GRUB at its prompt)."""
    return (
        f"search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
        "set prefix=($root)/boot/grub\n"
        "configfile $prefix/grub.cfg\n"
    )


def build_grub_images(work: Path, fs_uuid: str, firmware: Collection[str], *,
                      grub_lib: Path = Path("/usr/lib/grub"), log: Path | None = None
                      ) -> dict[str, Path]:
    """``core.img`` (i386-pc) and/or ``BOOTX64.EFI`` (x86_64-efi) with the early config."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "early.cfg"
    cfg.write_text(early_config(fs_uuid))
    out: dict[str, Path] = {}
    targets: list[tuple[str, str, str, tuple[str, ...]]] = []
    if "bios" in firmware:
        targets.append(("bios", "i386-pc", "core.img", ("biosdisk",)))
    if "uefi" in firmware:
        targets.append(("uefi", "x86_64-efi", "BOOTX64.EFI", ()))
    for fw, platform, name, extra in targets:
        moddir = grub_lib / platform
        if not (moddir / "moddep.lst").is_file():
            pkg = "grub-pc-bin" if platform == "i386-pc" else "grub-efi-amd64-bin"
            raise DiskError(f"GRUB modules for {platform} not found in {moddir}",
                            hint=f"install {pkg} (ci/setup-host.sh does)")
        dest = work / name
        run(["grub-mkimage", "-O", platform, "-d", moddir, "-o", dest, "-c", cfg,
             "-p", "/boot/grub", *GRUB_MODULES, *extra], log=log)
        out[fw] = dest
    return out


def embed_bios_core(disk: Path, boot_img: Path, core_img: Path, part: Partition) -> None:
    """Install GRUB's BIOS boot code: ``boot.img`` in the MBR (keeping the protective
    partition table), ``core.img`` in the BIOS boot partition, the blocklist that tells
    ``diskboot`` where the rest of core.img is. Same bytes as ``grub-bios-setup
    --no-rs-codes`` on a GPT disk, without needing a host block device."""
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != SECTOR:
        raise DiskError(f"{boot_img}: a boot image is {SECTOR} bytes, this is {len(boot)}")
    nsec = math.ceil(len(core) / SECTOR)
    if nsec * SECTOR > part.size:
        raise DiskError(f"GRUB core image ({len(core)} bytes) does not fit the BIOS boot "
                        f"partition ({part.size} bytes)", hint="use fewer GRUB modules")
    core += bytes(nsec * SECTOR - len(core))
    first = part.start // SECTOR
    with open(disk, "r+b") as f:
        mbr = f.read(SECTOR)
        boot[_BPB_START:_BPB_END] = mbr[_BPB_START:_BPB_END]
        boot[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"  # hard disk: skip the drive check
        boot[_NT_MAGIC:_PART_END] = mbr[_NT_MAGIC:_PART_END]  # keep the protective MBR
        pos = SECTOR - _BLOCKLIST.size
        while pos > 0 and _BLOCKLIST.unpack_from(core, pos)[1]:  # clear mkimage's lists
            core[pos:pos + _BLOCKLIST.size] = bytes(_BLOCKLIST.size)
            pos -= _BLOCKLIST.size
        pos = SECTOR - _BLOCKLIST.size
        if nsec > 1:
            segment = _KERNEL_SEG + (SECTOR >> 4)
            _BLOCKLIST.pack_into(core, pos, first + 1, nsec - 1, segment)
            pos -= _BLOCKLIST.size
        _BLOCKLIST.pack_into(core, pos, 0, 0, 0)  # terminator
        boot[_BOOT_DRIVE] = 0xFF
        struct.pack_into("<Q", boot, _KERNEL_SECTOR, first)
        f.seek(0)
        f.write(boot)
        f.seek(part.start)
        f.write(core)


def copy_sparse(src: Path, dst: Path, offset: int) -> int:
    """Copy ``src`` into ``dst`` at byte ``offset``, data extents only (holes stay holes).
    Returns the number of bytes copied."""
    copied = 0
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        size = os.fstat(fi.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = os.lseek(fi.fileno(), data, os.SEEK_HOLE)
            n = hole - data
            while n > 0:
                done = os.copy_file_range(fi.fileno(), fo.fileno(), n, data, offset + data)
                if done == 0:
                    raise DiskError(f"short copy from {src} at {data}")
                data += done
                n -= done
                copied += done
            pos = hole
    return copied


def make_esp(path: Path, size: int, efi_binary: Path, *, label: str = "ESP",
             volume_id: str = "", log: Path | None = None) -> None:
    """A FAT32 EFI system partition image holding ``EFI/BOOT/BOOTX64.EFI`` (no mounting)."""
    if path.exists():
        path.unlink()
    args = ["mkfs.fat", "-F", "32", "-n", label, "-C"]
    if volume_id:
        args[-1:-1] = ["-i", volume_id]
    run([*args, path, str(size // 1024)], log=log)
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", path, "::/EFI", "::/EFI/BOOT"], log=log, env=env)
    run(["mcopy", "-i", path, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"], log=log, env=env)


def assemble(rootfs: Path, disk: Path, work: Path, *, fs_uuid: str, firmware: Collection[str],
             seed: str, root_guid: str | None = None, esp_mib: int = 64,
             grub_lib: Path = Path("/usr/lib/grub"), log: Path | None = None) -> DiskLayout:
    """Write ``disk``: a GPT disk with ``rootfs`` as its root partition (sized to fit it),
    bootable under the requested firmware. ``work`` holds intermediate files."""
    layout = plan_layout(rootfs.stat().st_size, firmware, seed=seed, esp_mib=esp_mib,
                         root_guid=root_guid)
    return assemble_layout(rootfs, disk, work, layout, fs_uuid=fs_uuid, grub_lib=grub_lib,
                           log=log)


def assemble_layout(rootfs: Path, disk: Path, work: Path, layout: DiskLayout, *, fs_uuid: str,
                    grub_lib: Path = Path("/usr/lib/grub"), log: Path | None = None
                    ) -> DiskLayout:
    """Write ``disk`` with ``layout`` (from :func:`plan_layout`): the partitions, GRUB for each
    firmware the layout has room for, ``rootfs`` copied into the root partition."""
    root = layout.part("root")
    if root is None or rootfs.stat().st_size > root.size:
        raise DiskError(f"{rootfs.name} does not fit the root partition of the layout")
    firmware = [fw for fw, part in (("bios", "bios"), ("uefi", "esp")) if layout.part(part)]
    images = build_grub_images(work / "grub", fs_uuid, firmware, grub_lib=grub_lib, log=log)
    tmp = disk.with_name(disk.name + ".part")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(layout.size)
    args: list[str | Path] = ["sgdisk", "--disk-guid", layout.disk_guid]
    for p in layout.partitions:
        first = p.start // SECTOR
        last = (p.start + p.size) // SECTOR - 1
        args += ["-n", f"{p.number}:{first}:{last}", "-t", f"{p.number}:{p.type_guid}",
                 "-c", f"{p.number}:{p.name}", "-u", f"{p.number}:{p.guid}"]
    run([*args, tmp], log=log)
    esp = layout.part("esp")
    if esp is not None:
        esp_img = work / "esp.img"
        make_esp(esp_img, esp.size, images["uefi"], volume_id=layout.disk_guid[:8], log=log)
        copy_sparse(esp_img, tmp, esp.start)
        esp_img.unlink()
    copy_sparse(rootfs, tmp, root.start)
    bios = layout.part("bios")
    if bios is not None:
        embed_bios_core(tmp, grub_lib / "i386-pc" / "boot.img", images["bios"], bios)
    run(["sgdisk", "--verify", tmp], log=log)
    os.replace(tmp, disk)
    (work / "layout.json").write_text(json.dumps(layout.to_json(), indent=2))
    return layout
