"""Every default xenforge applies, in one place. The recipe model takes its field defaults
from here; stage options have no defaults of their own for these (the planner always passes
the recipe's value), and the diskimage-builder elements leave them to their caller."""

from __future__ import annotations

#: SOURCE_DATE_EPOCH when neither the recipe nor its pinned sources give a date
#: (2023-11-14T22:13:20Z); see :func:`xenforge.plan.assign_epochs`
EPOCH = 1700000000

#: Xen's command line in a dom0 image's boot menu
XEN_CMDLINE = "console=com1 com1=115200 dom0_mem=1024M,max:1024M"
#: the dom0 kernel's command line under Xen (its console is Xen's, hvc0)
DOM0_KERNEL_CMDLINE = "console=hvc0"
#: a PV/PVH guest kernel's command line (after root=/dev/xvda ro)
GUEST_KERNEL_CMDLINE = "console=hvc0"
#: the kernel's command line in a dom0 image's plain-Linux (no Xen) boot entries
LINUX_CMDLINE = "console=ttyS0,115200"
#: seconds GRUB shows its menu
GRUB_TIMEOUT = 3
#: an HVM guest that boots its own disk (an unmodified OS): its kernel's command line and
#: GRUB menu. Its console is an emulated UART, each character one exit to the device model
#: in dom0: `quiet` keeps the boot messages off it (under QEMU's TCG they cost minutes), and
#: no menu is drawn
HVM_GUEST_CMDLINE = "console=ttyS0,115200 quiet"
HVM_GUEST_GRUB_TIMEOUT = 0

#: seconds the ISO's boot menu waits before its default entry (live)
ISO_MENU_TIMEOUT = 5
#: zstd level of the ISO's squashfs: the default dom0 system in 10 s at 6 against 94 s at
#: mksquashfs's own 15, 7% larger (195 against 182 MB); 3 is 6 s and 13% larger
SQUASHFS_ZSTD_LEVEL = 6

#: Maintainer of every .deb xenforge builds (a reserved domain: lintian accepts it)
MAINTAINER = "xenforge <xenforge@example.org>"

#: the bridge a dom0 image makes for its guests
BRIDGE = "xenbr0"
#: the SSH user an image with ``access: true`` gets
ACCESS_USER = "xenforge"

#: the target release of a recipe that names none (releases/debian-RELEASE.yaml)
RELEASE = "trixie"

#: MiB of a disk image's EFI system partition
ESP_MIB = 64

#: boots of each guest the guests suite checks (create, clean shutdown, create again)
GUEST_BOOTS = 2
