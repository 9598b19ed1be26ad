"""Read what a build exported to ``out/<recipe>/``: the dom0 image and ISO to boot, their
access key, and what a booted host must show (the expectations handed to the testinfra suites)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenforge.core.errors import InputError


@dataclass
class BuiltHost:
    out: Path
    disk: Path
    firmware: list[str]
    key: Path | None
    user: str
    info: dict[str, Any] = field(default_factory=dict)


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def find_dom0(out: Path) -> BuiltHost:
    """The dom0 image a build of a recipe exported; InputError naming the fix if none."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"{out} holds no build", hint=f"build it first: xenforge build "
                         f"recipes/{out.name}.yaml (or pass -o/--out where you built it)")
    for info_file in sorted(out.glob("image-*/image-info.json")):
        info = _json(info_file)
        if info.get("role") != "dom0":
            continue
        folder = info_file.parent
        disks = [folder / f"{info['name']}.{fmt}" for fmt in ("qcow2", "raw")]
        disk = next((d for d in disks if d.is_file()), None)
        if disk is None:
            continue
        key = folder / "access_key"
        return BuiltHost(out=out, disk=disk, firmware=list(info.get("firmware") or ["bios"]),
                         key=key if key.is_file() else None,
                         user=info.get("access_user") or "root", info=info)
    raise InputError(f"{out} has no dom0 disk image",
                     hint="the recipe needs an image with role: dom0 (see recipes/xen-host.yaml)")


@dataclass
class BuiltIso:
    out: Path
    iso: Path
    firmware: list[str]
    key: Path | None
    user: str
    info: dict[str, Any] = field(default_factory=dict)


def find_iso(out: Path) -> BuiltIso:
    """The ISO a build of a recipe exported; InputError naming the fix if none."""
    if not (out / "manifest.json").is_file():
        raise InputError(f"{out} holds no build", hint=f"build it first: xenforge build "
                         f"recipes/{out.name}.yaml (or pass -o/--out where you built it)")
    for info_file in sorted(out.glob("iso-*/iso-info.json")):
        info = _json(info_file)
        iso = info_file.parent / info["iso"]["file"]
        if iso.is_file():
            key = info_file.parent / "access_key"
            return BuiltIso(out=out, iso=iso, firmware=list(info["iso"]["firmware"]),
                            key=key if key.is_file() else None,
                            user=info.get("access_user") or "root", info=info)
    raise InputError(f"{out} has no ISO", hint="add an `iso:` section to the recipe (see "
                     "recipes/xen-host.yaml) and build it again")


def expectations(out: Path) -> dict[str, Any]:
    """What the testinfra suites check, from the build's own records."""
    expect: dict[str, Any] = {}
    hyp = out / "hypervisor" / "build-info.json"
    if hyp.is_file():
        info = _json(hyp)
        expect["xen"] = {"version": info["version"], "build_id": info["build_id"]}
    try:
        info = find_dom0(out).info
    except InputError:
        try:  # a build of the ISO alone: the same rootfs, guests and command lines
            info = find_iso(out).info
        except InputError:
            return expect
    if info.get("bridge"):
        expect["bridge"] = info["bridge"]
    dom0: dict[str, Any] = {}
    if info.get("kernel_version"):
        dom0["kernel_release"] = info["kernel_version"]
    m = re.search(r"dom0_mem=(\d+)([MG])", info.get("xen_cmdline") or "")
    if m:
        dom0["memory_mib"] = int(m.group(1)) * (1024 if m.group(2) == "G" else 1)
    expect["dom0"] = dom0
    expect["packages"] = {p["name"]: p["version"] for p in info.get("xenforge_packages", [])
                          if p.get("installed")}
    # the C library the image was built with (the target release's): the host runs it
    libc = (info.get("packages") or {}).get("libc6")
    if libc:
        expect["packages"]["libc6"] = libc
    codename = (info.get("os_release") or {}).get("VERSION_CODENAME")
    if codename:
        expect["os"] = {"codename": codename}
    expect["guests"] = [
        {"name": g["name"], "type": g["type"], "memory": g["memory"],
         "kernel_release": g.get("kernel_version"), "config": f"/etc/xen/{g['name']}.cfg",
         "autostart": bool(g.get("autostart")),
         **({"os": g["os"]} if g.get("os") else {}),
         **({"pv_drivers": g["pv_drivers"]} if g.get("pv_drivers") is not None else {}),
         **({"console_log": g["console_log"]} if g.get("console_log") else {})}
        for g in info.get("guests", [])]
    return expect
