# Defaults for the xenforge-guests element (see its README.rst).
export XENFORGE_GUESTS_DIR=${XENFORGE_GUESTS_DIR:-}
