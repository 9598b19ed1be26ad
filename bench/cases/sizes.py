"""Sizes: every artifact of the recipe, and inside each root filesystem the largest Debian
packages (its dpkg database's Installed-Size) and what documentation, locales, manual pages,
firmware and kernel modules take - what a smaller image could leave out."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from bench.harness import Outcome, Settings, Table, xenforge
from xenforge.cache import Cache
from xenforge.core.units import human_size

NAME, TITLE, QUICK = "sizes", "Sizes of the images and what fills them", True
TOP = 10
#: folders of a root filesystem that a smaller image might drop
PARTS = ["/usr/share/doc", "/usr/share/locale", "/usr/share/man", "/usr/lib/firmware",
         "/usr/lib/modules", "/var/cache/apt", "/var/lib/apt/lists"]


def dpkg_sizes(status: str) -> dict[str, int]:
    """Package -> installed bytes, from a dpkg status file (installed packages only)."""
    sizes = {}
    for para in status.split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in para.splitlines() if ": " in ln
                      and not ln.startswith(" "))
        if "install ok installed" in fields.get("Status", "") and "Package" in fields:
            sizes[fields["Package"]] = int(fields.get("Installed-Size", "0")) * 1024
    return sizes


def _inside(fs: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """(package sizes, folder sizes, bytes used) of an ext4 image, mounted read-only."""
    with tempfile.TemporaryDirectory(prefix="xf-bench-mnt-") as mnt:
        subprocess.run(["mount", "-o", "ro,noload,loop", str(fs), mnt], check=True)
        try:
            root = Path(mnt)
            status = (root / "var/lib/dpkg/status").read_text(errors="replace")
            parts = {}
            for part in PARTS:
                if (root / part.lstrip("/")).is_dir():
                    du = subprocess.run(["du", "-sb", str(root / part.lstrip("/"))],
                                        capture_output=True, text=True, check=False)
                    parts[part] = int(du.stdout.split()[0]) if du.stdout else 0
            df = subprocess.run(["df", "-B1", "--output=used", mnt], capture_output=True,
                                text=True, check=True).stdout.split()[-1]
        finally:
            subprocess.run(["umount", mnt], check=False)
    return dpkg_sizes(status), parts, int(df)


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    out = settings.work / "sizes-out"
    build = xenforge(settings, "build", settings.recipe, "-o", out, "--progress", "json")
    build.check()
    arts = [e for e in build.events if e.get("event") == "artifact"
            and Path(str(e["path"])).suffix in (".raw", ".qcow2", ".iso", ".ext4", ".deb")]
    outcome.tables.append(Table(["artifact", "size"], [
        [str(e["path"]), human_size(int(e["size"]))]
        for e in sorted(arts, key=lambda e: -int(e["size"]))]))
    plan = json.loads(xenforge(settings, "plan", "--json", settings.recipe).check().stdout)
    cache = Cache(settings.cache)
    figures: dict[str, object] = {"artifacts": {str(e["path"]): e["size"] for e in arts}}
    for node in plan["nodes"]:
        if node["stage"] != "rootfs" or not cache.store.has(node["id"]):
            continue
        for fs in sorted(cache.store.out(node["id"]).glob("*.ext4")):
            pkgs, parts, used = _inside(fs)
            top = sorted(pkgs.items(), key=lambda kv: -kv[1])[:TOP]
            outcome.tables.append(Table(
                [f"{node['name']} ({fs.name}): {len(pkgs)} packages, {human_size(used)} "
                 "used; largest packages", "installed"],
                [[name, human_size(size)] for name, size in top]))
            outcome.tables.append(Table([f"{node['name']}: folders", "size", "share"], [
                [part, human_size(size), f"{100 * size / used:.1f}%" if used else "-"]
                for part, size in parts.items()]))
            figures[node["name"]] = {"packages": len(pkgs), "used": used,
                                     "largest": dict(top), "folders": parts}
    outcome.figures = figures
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return outcome
