"""Every bound on a size a recipe gives, in one place: the recipe model and its checks use
them (so ``xenforge validate`` reports a size out of range with file, line and field) and the
stages' options take theirs from here (a planned node never holds a size they refuse)."""

from __future__ import annotations

#: MiB: the smallest disk image (a dom0's disk, a guest disk with its own bootloader)
MIN_DISK_MIB = 64
#: MiB: the smallest root filesystem (a guest's filesystem is its whole disk)
MIN_ROOTFS_MIB = 256
#: MiB: the largest disk image or filesystem (16 TiB)
MAX_IMAGE_MIB = 16 << 20
