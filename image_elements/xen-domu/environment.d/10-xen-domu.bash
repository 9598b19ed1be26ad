# Defaults for the xen-domu element (see its README.rst).
export XENFORGE_HOSTNAME=${XENFORGE_HOSTNAME:-xen-domu}
export XENFORGE_GUEST_INITRAMFS_MODULES=${XENFORGE_GUEST_INITRAMFS_MODULES:-xen-blkfront ata_piix ahci sd_mod ext4}
