# Defaults for the xen-domu element (see its README.rst).
export XENFORGE_HOSTNAME=${XENFORGE_HOSTNAME:-xen-domu}
