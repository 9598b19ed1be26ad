# Defaults for the xenforge-access element (see its README.rst).
export XENFORGE_ACCESS_USER=${XENFORGE_ACCESS_USER:-xenforge}
export XENFORGE_ACCESS_PUBKEY=${XENFORGE_ACCESS_PUBKEY:-}
