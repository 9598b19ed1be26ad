"""Peers: a guest-style Debian 13 (trixie) image with sshd and networking, by xenforge's rootfs
stage (the default guest disk, ``recipes/guest.yaml``) and by mkosi (Debian's package: a
non-bootable GPT disk with one ext4 root, its incremental cache on), on this machine in this
run: cold and warm build, size, package count. Target: xenforge's warm rebuild of an
unchanged base at or below mkosi's.

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

from bench.harness import REPO, Outcome, Settings, Table, Target, clock, median, timed, xenforge
from xenforge.cache import Cache
from xenforge.core.units import human_size

NAME, TITLE, QUICK = "peers", "Peers: the same guest image by xenforge and by mkosi", False
#: what the peer's image holds besides mkosi's base packages (systemd, ...)
MKOSI_PACKAGES = ["openssh-server", "systemd-resolved", "iproute2", "ifupdown",
                  "isc-dhcp-client"]


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
    outcome.tables.append(Table(["tool", "cold", "warm (unchanged)", "size (apparent / "
                                 "allocated)", "packages"], rows))
    outcome.figures = figures
    outcome.notes.append(
        "Not measured here: KIWI (PyPI `kiwi`), whose Debian disk images need a description "
        "with its own bootstrap and device mapping, not set up yet; a boot to the SSH banner "
        "of the peers' images (mkosi's bootable images need an EFI system partition, and this "
        "machine cannot mount vfat). xenforge's guest boots are in the boot benchmark.")
    return outcome
