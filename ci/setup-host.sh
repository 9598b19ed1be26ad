#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) for xenforge: system packages, a deb-src
# entry for bookworm, and the project's virtual environment in ./.venv.
# Idempotent: a second run installs nothing and changes nothing.
set -eu -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${XENFORGE_VENV:-$here/.venv}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host.sh: run me as root (apt-get, loop devices and mounts need it)" >&2
    exit 2
fi

# Every system package xenforge needs, grouped by what needs it.
packages=(
    # engine and Python
    python3 python3-venv python3-dev git ca-certificates
    # common toolchain
    build-essential ccache pkg-config bison flex bc cpio rsync kmod patch quilt
    # Xen hypervisor and toolstack
    acpica-tools uuid-dev libyajl-dev zlib1g-dev libncurses-dev libext2fs-dev
    libzstd-dev liblzma-dev libbz2-dev libaio-dev python3-setuptools gettext
    # Linux kernel
    libelf-dev libssl-dev dwarves
    # Debian packaging
    dpkg-dev debhelper fakeroot lintian
    # images (diskimage-builder and what it calls)
    debootstrap sudo qemu-utils e2fsprogs dosfstools mtools squashfs-tools
    parted gdisk fdisk util-linux kpartx
    # bootloaders, ISO, firmware
    grub-pc-bin grub-efi-amd64-bin grub-common grub2-common xorriso ovmf
    # boot and verify
    qemu-system-x86 busybox-static openssh-client
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done

# A deb-src entry for bookworm: Xen's source comes from Debian's source package.
if ! apt-get indextargets --format '$(IDENTIFIER) $(RELEASE)' | grep -q '^Sources bookworm$'; then
    cat > /etc/apt/sources.list.d/xenforge-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
fi

if [ "${#missing[@]}" -gt 0 ] || [ -n "${need_update:-}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || echo "setup-host.sh: apt-get update reported errors (an unreachable extra repository?); going on" >&2
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host.sh: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The virtual environment, from Debian's own Python (not a pyenv/conda one).
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.xenforge-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$here[dev]"
    touch "$stamp"
fi
echo "setup-host.sh: host ready; xenforge is $venv/bin/xenforge"
