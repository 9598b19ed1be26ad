"""GPT disk assembly without loop devices or mounts (xenforge.disk), on small real files."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from xenforge.lib import gptdisk as disk

TOOLS = ("sgdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "grub-mkimage")
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="disk tools missing (run ci/setup-host.sh)")
GRUB_LIB = Path("/usr/lib/grub")
needs_grub = pytest.mark.skipif(not (GRUB_LIB / "i386-pc" / "boot.img").is_file()
                                or not (GRUB_LIB / "x86_64-efi" / "moddep.lst").is_file(),
                                reason="grub-pc-bin / grub-efi-amd64-bin missing")
FS_UUID = "0d7d3c2a-1111-4222-8333-944455556666"


def test_layout_both_firmwares() -> None:
    lay = disk.plan_layout(100 * disk.MIB + 1, ["bios", "uefi"], seed="s")
    names = [p.name for p in lay.partitions]
    assert names == ["bios", "esp", "root"]
    bios, esp, root = lay.partitions
    assert bios.start == disk.MIB and bios.size == disk.MIB
    assert esp.start == 2 * disk.MIB and esp.size == 64 * disk.MIB
    assert root.start == 66 * disk.MIB and root.size == 101 * disk.MIB  # rounded up
    assert lay.size == root.start + root.size + disk.MIB
    assert all(p.start % disk.MIB == 0 for p in lay.partitions)
    assert disk.overhead_mib(["bios", "uefi"]) == 67


def test_layout_is_reproducible_and_seeded() -> None:
    a = disk.plan_layout(disk.MIB, ["uefi"], seed="one")
    assert a == disk.plan_layout(disk.MIB, ["uefi"], seed="one")
    assert a.disk_guid != disk.plan_layout(disk.MIB, ["uefi"], seed="two").disk_guid
    assert [p.name for p in a.partitions] == ["esp", "root"]
    fixed = disk.plan_layout(disk.MIB, ["bios"], seed="x", root_guid="abc-def")
    assert fixed.part("root").guid == "ABC-DEF"  # type: ignore[union-attr]


def test_layout_rejects_unknown_firmware() -> None:
    with pytest.raises(disk.DiskError, match="unknown firmware"):
        disk.plan_layout(disk.MIB, ["coreboot"], seed="s")
    with pytest.raises(disk.DiskError):
        disk.plan_layout(disk.MIB, [], seed="s")


def test_early_config_finds_root_by_uuid() -> None:
    cfg = disk.early_config(FS_UUID)
    assert f"search --no-floppy --fs-uuid --set=root {FS_UUID}" in cfg
    assert "configfile $prefix/grub.cfg" in cfg


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(8 * disk.MIB)
        f.seek(3 * disk.MIB)
        f.write(b"x" * 4096)
    dst = tmp_path / "dst"
    with open(dst, "wb") as f:
        f.truncate(16 * disk.MIB)
    copied = disk.copy_sparse(src, dst, disk.MIB)
    assert copied < disk.MIB  # only the data extent
    data = dst.read_bytes()
    assert data[4 * disk.MIB:4 * disk.MIB + 4096] == b"x" * 4096
    assert data.count(b"x") == 4096
    assert dst.stat().st_blocks * 512 < disk.MIB


def _rootfs(tmp_path: Path) -> Path:
    tree = tmp_path / "tree" / "boot" / "grub"
    tree.mkdir(parents=True)
    (tree / "grub.cfg").write_text("echo hello\n")
    img = tmp_path / "root.ext4"
    with open(img, "wb") as f:
        f.truncate(32 * disk.MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", FS_UUID, "-d", tmp_path / "tree", img],
                   check=True)
    return img


@needs_tools
@needs_grub
def test_assemble_bios_and_uefi(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    out = tmp_path / "disk.raw"
    lay = disk.assemble(rootfs, out, tmp_path / "work", fs_uuid=FS_UUID,
                        firmware=["bios", "uefi"], seed="t", root_guid=FS_UUID)
    assert out.stat().st_size == lay.size
    table = subprocess.run(["sgdisk", "-p", out], check=True, capture_output=True,
                           text=True).stdout
    assert "EF02" in table and "EF00" in table and "8304" in table
    info = subprocess.run(["sgdisk", "-i", "3", out], check=True, capture_output=True,
                          text=True).stdout
    assert FS_UUID.upper() in info  # root=PARTUUID=... points here
    # the root partition holds the filesystem byte for byte
    root = lay.part("root")
    assert root is not None
    with open(out, "rb") as f:
        f.seek(root.start)
        assert f.read(2 * disk.MIB) == rootfs.read_bytes()[: 2 * disk.MIB]
    # the ESP has the EFI loader, read with mtools at the partition's offset
    esp = lay.part("esp")
    assert esp is not None
    listing = subprocess.run(["mdir", "-i", f"{out}@@{esp.start}", "::/EFI/BOOT"],
                             check=True, capture_output=True, text=True,
                             env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout
    assert "BOOTX64" in listing
    # MBR: GRUB's boot code pointing at core.img in the BIOS boot partition
    bios = lay.part("bios")
    assert bios is not None
    mbr = out.read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[0x1C2] == 0xEE  # the protective MBR entry survived
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == bios.start // 512
    assert mbr[0x66:0x68] == b"\x90\x90"
    core = (tmp_path / "work" / "grub" / "core.img").read_bytes()
    nsec = -(-len(core) // 512)
    with open(out, "rb") as f:
        f.seek(bios.start)
        first = f.read(512)
    start, length, segment = struct.unpack_from("<QHH", first, 500)
    assert (start, length, segment) == (bios.start // 512 + 1, nsec - 1, 0x820)
    assert struct.unpack_from("<QHH", first, 488) == (0, 0, 0)


@needs_tools
@needs_grub
def test_assemble_uefi_only_has_no_bios_code(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    out = tmp_path / "disk.raw"
    lay = disk.assemble(rootfs, out, tmp_path / "work", fs_uuid=FS_UUID, firmware=["uefi"],
                        seed="t")
    assert [p.name for p in lay.partitions] == ["esp", "root"]
    assert out.read_bytes()[:440] == bytes(440)  # sgdisk's protective MBR, no boot code


def test_embed_rejects_oversized_core(tmp_path: Path) -> None:
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(512))
    core = tmp_path / "core.img"
    core.write_bytes(bytes(3 * 512))
    target = tmp_path / "d"
    target.write_bytes(bytes(8192))
    part = disk.Partition(1, "bios", disk.TYPE_BIOS_BOOT, "g", 1024, 1024)
    with pytest.raises(disk.DiskError, match="does not fit"):
        disk.embed_bios_core(target, boot, core, part)
