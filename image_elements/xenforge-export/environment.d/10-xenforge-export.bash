# Defaults for the xenforge-export element (see its README.rst).
export XENFORGE_EXPORT_DIR=${XENFORGE_EXPORT_DIR:-}
