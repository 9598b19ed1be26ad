"""Peers: a guest-style Debian 13 (trixie) image with sshd and networking, by xenforge's rootfs
stage (the default guest disk, ``recipes/guest.yaml``), by mkosi (Debian's package: a
non-bootable GPT disk with one ext4 root, its incremental cache on) and by KIWI (PyPI's
``kiwi``, pinned, installed into a venv in the cache's scratch on first use: an ``ext4``
filesystem image, as xenforge's guest disk is one; its shared cache dir of downloaded
packages in the run's scratch, empty for the cold build), on this machine in this run:
cold and warm build, size, package count. Target: xenforge's warm rebuild of an unchanged
base at or below mkosi's.

xenforge's cold figure is the guest root filesystem's own build time (its manifest: the
diskimage-builder run, without the wait for the guest kernel it installs); its warm figure a
real no-op ``xenforge build`` of the guest recipe."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bench.harness import REPO, Outcome, Settings, Table, Target, clock, median, timed, xenforge
from xenforge.cache import Cache
from xenforge.core.units import human_size

NAME, TITLE, QUICK = "peers", "Peers: the same guest image by xenforge and by mkosi", False
#: what the peer's image holds besides mkosi's base packages (systemd, ...)
MKOSI_PACKAGES = ["openssh-server", "systemd-resolved", "iproute2", "ifupdown",
                  "isc-dhcp-client"]
#: the KIWI release measured (PyPI)
KIWI = "kiwi==11.1.6"
#: KIWI's image description: the same packages over an init system, one ext4 filesystem
KIWI_DESCRIPTION = """<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.0" name="peer-guest">
    <description type="system">
        <author>xenforge bench</author>
        <contact>bench@xenforge.invalid</contact>
        <specification>guest-style Debian 13 image with sshd and networking</specification>
    </description>
    <preferences>
        <version>1.0.0</version>
        <packagemanager>apt</packagemanager>
        <timezone>UTC</timezone>
        <rpm-check-signatures>false</rpm-check-signatures>
        <type image="ext4"/>
    </preferences>
    <repository type="apt-deb" distribution="trixie" components="main"
                repository_gpgcheck="false">
        <source path="{mirror}"/>
    </repository>
    <packages type="image">
        <package name="systemd-sysv"/>
{packages}
    </packages>
    <packages type="bootstrap">
        <package name="apt"/>
        <package name="dpkg"/>
        <package name="base-files"/>
        <package name="base-passwd"/>
        <package name="bash"/>
        <package name="coreutils"/>
    </packages>
</image>
"""


@dataclass
class Built:
    """One tool's figures for the job."""

    tool: str
    cold: float
    warm: float
    size: tuple[int, int]  # apparent, allocated bytes
    packages: int

    def row(self) -> list[str]:
        return [self.tool, clock(self.cold), clock(self.warm),
                f"{human_size(self.size[0])} / {human_size(self.size[1])}", str(self.packages)]


def _sizes(path: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of a (sparse) file."""
    st = path.stat()
    return st.st_size, st.st_blocks * 512


#: systemd-nspawn (which mkosi runs its workspace commands in) on a host whose PID 1 is not
#: systemd: no transient scope, no machined registration
NSPAWN_SHIM = """#!/bin/sh
exec /usr/bin/systemd-nspawn --keep-unit --register=no "$@"
"""


def _mkosi_argv(root: Path, image: Path) -> list[str]:
    """mkosi's build, in a mount namespace of its own whose /run/systemd/nspawn is a tmpfs
    (nspawn refuses to clean up its propagation folder on a disk filesystem, and this
    machine's /run is one), with nspawn told not to need systemd as PID 1."""
    shim = root / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "systemd-nspawn").write_text(NSPAWN_SHIM)
    (shim / "systemd-nspawn").chmod(0o755)
    mkosi = ["mkosi", "-d", "debian", "-r", "trixie", "-t", "gpt_ext4", "--hostname", "peer",
             "--incremental", "--cache", str(root / "cache"), "--manifest-format", "json",
             "-o", str(image), "-f", *[f"--package={p}" for p in MKOSI_PACKAGES], "build"]
    inner = ("mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && "
             f"exec {shlex.join(mkosi)}")
    return ["env", f"PATH={shim}:{os.environ.get('PATH', '/usr/bin:/bin')}", "unshare", "-m",
            "--propagation", "private", "sh", "-c", inner]


def _mkosi(settings: Settings) -> Built:
    root = settings.work / "mkosi"
    root.mkdir(parents=True, exist_ok=True)
    image = root / "image.raw"
    argv = _mkosi_argv(root, image)
    cold = timed(argv, cwd=root).check()
    size = _sizes(image)
    manifest = Path(f"{image}.manifest")
    packages = len(json.loads(manifest.read_text()).get("packages", [])) \
        if manifest.is_file() else 0
    warm = timed(argv, cwd=root).check()
    version = subprocess.run(["mkosi", "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return Built(f"{version} (gpt_ext4, incremental)", cold.wall, warm.wall, size, packages)


def _kiwi_ng(settings: Settings) -> Path:
    """kiwi-ng of a venv of its own in the cache's scratch (made on first use, from PyPI)."""
    venv = Cache(settings.cache).scratch("bench-kiwi") / "venv"
    kiwi = venv / "bin" / "kiwi-ng"
    if not kiwi.exists():
        timed(["python3", "-m", "venv", venv]).check()
        timed([venv / "bin" / "pip", "install", "-q", KIWI]).check()
    return kiwi


def _kiwi(settings: Settings) -> Built:
    root = settings.work / "kiwi"
    desc = root / "description"
    desc.mkdir(parents=True, exist_ok=True)
    release = yaml.safe_load((REPO / "releases" / "debian-trixie.yaml").read_text())
    (desc / "appliance.kiwi").write_text(KIWI_DESCRIPTION.format(
        mirror=release["mirror"], packages="\n".join(
            f'        <package name="{p}"/>' for p in MKOSI_PACKAGES)))
    kiwi = _kiwi_ng(settings)
    runs = []
    for _ in range(2):  # cold: nothing downloaded yet; warm: its package cache kept
        shutil.rmtree(root / "out", ignore_errors=True)
        runs.append(timed([kiwi, "--shared-cache-dir", root / "cache", "system", "build",
                           "--description", desc, "--target-dir", root / "out"]).check())
    image = next((root / "out").glob("*.ext4"))
    packages = next((root / "out").glob("*.packages"))
    built = Built(f"KIWI {KIWI.split('==')[1]} (ext4 filesystem image)", runs[0].wall,
                  runs[1].wall, _sizes(image), len(packages.read_text().splitlines()))
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return built


def _xenforge(settings: Settings) -> Built:
    recipe = REPO / "recipes" / "guest.yaml"
    out = settings.work / "peers-out"
    xenforge(settings, "build", recipe, "-o", out, "--quiet").check()  # built if missing
    warm = median([xenforge(settings, "build", recipe, "-o", out, "--quiet").check().wall
                   for _ in range(settings.runs)])
    plan = json.loads(xenforge(settings, "plan", "--json", recipe).check().stdout)
    node = next(n for n in plan["nodes"] if n["stage"] == "rootfs")
    cache = Cache(settings.cache)
    manifest = cache.store.read_manifest(node["id"]) or {}
    fs = next(cache.store.out(node["id"]).glob("*.ext4"))
    info = json.loads((cache.store.out(node["id"]) / "image-info.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return Built("xenforge (rootfs stage: diskimage-builder)",
                 float(manifest.get("seconds", 0.0)), warm, _sizes(fs),
                 len(info.get("packages", {})))


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    mine = _xenforge(settings)
    rows = [mine.row()]
    figures: dict[str, object] = {"xenforge": asdict(mine)}
    if shutil.which("mkosi") and os.geteuid() == 0:
        peer = _mkosi(settings)
        figures["mkosi"] = asdict(peer)
        rows.append(peer.row())
        outcome.targets.append(Target("xenforge warm rebuild against mkosi's",
                                      mine.warm / peer.warm, 1.0, "x"))
    else:
        outcome.notes.append("mkosi not measured: it needs root and Debian's mkosi package "
                             "(ci/setup-host.sh installs it)")
    if os.geteuid() == 0:
        kiwi = _kiwi(settings)
        figures["kiwi"] = asdict(kiwi)
        rows.append(kiwi.row())
    else:
        outcome.notes.append("KIWI not measured: it needs root")
    outcome.tables.append(Table(["tool", "cold", "warm (unchanged)", "size (apparent / "
                                 "allocated)", "packages"], rows))
    outcome.figures = figures
    outcome.notes.append(
        "KIWI has no cache of built trees: its warm build installs every package again, "
        "from downloads it kept. Its partitioned disk types (oem) map partitions with "
        "device-mapper, which this machine lacks, so its image is the filesystem type. Not "
        "measured here: a boot to the SSH banner of the peers' images (mkosi's bootable "
        "images need an EFI system partition, and this machine cannot mount vfat). "
        "xenforge's guest boots are in the boot benchmark.")
    return outcome
