# Settings of the xenforge-boot element (see its README.rst); xenforge's disk stage writes
# the machine's own later, so they are empty unless you set them.
export XENFORGE_ROOT_FS_UUID=${XENFORGE_ROOT_FS_UUID:-}
export XENFORGE_ROOT_PARTUUID=${XENFORGE_ROOT_PARTUUID:-}
export XENFORGE_XEN_CMDLINE=${XENFORGE_XEN_CMDLINE:-}
export XENFORGE_KERNEL_CMDLINE=${XENFORGE_KERNEL_CMDLINE:-}
export XENFORGE_LINUX_CMDLINE=${XENFORGE_LINUX_CMDLINE:-}
export XENFORGE_GRUB_TIMEOUT=${XENFORGE_GRUB_TIMEOUT:-}
