"""The ``images:`` and ``guests:`` sections.

Nodes per image ``NAME``::

    apt-repo:NAME   inputs debs = [xen-debs (dom0 images), kernel:<images.NAME.kernel>]
    rootfs:NAME     inputs repo = apt-repo:NAME (late: the rootfs builds while it compiles)
                    files  elements = the image_elements/ folders it uses
    image:NAME      (dom0 images) the ``disk`` stage: inputs rootfs = rootfs:NAME,
                    guests = [the disk node of each guests[] entry]; options: size,
                    formats, firmware, the Xen and dom0 command lines, the guests' settings;
                    (guest images with ``bootloader``) the ``disk`` stage in guest mode:
                    a partitioned disk with GRUB around rootfs:NAME

A guest's disk is its guest recipe's ``rootfs`` node, used directly (dom0 starts its
kernel), or that recipe's ``image`` node when the guest boots its own bootloader (HVM).
Several ``guests:`` entries may name one guest recipe: it is planned once (its rootfs built
once) and each guest gets its own copy of the disk in the dom0 image. A guest recipe's nodes
that equal the host's (the same kernel) are shared; one that differs under a taken name is
renamed (``NAME-2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenforge import defaults
from xenforge.core.data import data_dir
from xenforge.lib.elements import own_folders, rootfs_elements
from xenforge.plan.graph import BuildEnv, Graph, Node
from xenforge.plan.iso import LIVE_ELEMENT
from xenforge.plan.kernels import plan_kernels
from xenforge.recipe.load import LoadedRecipe
from xenforge.recipe.model import GuestSection, ImageSection


def plan_images(graph: Graph, loaded: LoadedRecipe, env: BuildEnv,
                kernels: dict[str, str]) -> dict[str, str]:
    """Plan the recipe's images (and its guests'); returns image key -> its final node."""
    r = loaded.recipe
    finals: dict[str, str] = {}
    guest_disks = _plan_guests(graph, loaded, env) if any(
        img.role == "dom0" for img in r.images.values()) else []
    for key, img in r.images.items():
        rootfs = _rootfs(graph, loaded, env, kernels, key, img)
        if img.role == "guest" and not img.bootloader:
            finals[key] = rootfs.name
            continue
        if img.role == "guest":  # a bootable guest disk (see the module docstring)
            disk = graph.add_shared(Node(
                name=f"image:{key}", stage="disk", env=env,
                inputs={"rootfs": rootfs.name, "guests": []},
                options={**disk_options(loaded, key, img, []), "role": "guest",
                         "formats": ["raw"], "linux_cmdline": defaults.HVM_GUEST_CMDLINE,
                         "grub_timeout": defaults.HVM_GUEST_GRUB_TIMEOUT},
                export=True))
            finals[key] = disk.name
            continue
        disk = graph.add_shared(Node(
            name=f"image:{key}", stage="disk", env=env,
            inputs={"rootfs": rootfs.name, "guests": [gd.node for gd in guest_disks]},
            options=disk_options(loaded, key, img,
                                 [_guest(gd, img) for gd in guest_disks])))
        finals[key] = disk.name
    return finals


def _rootfs(graph: Graph, loaded: LoadedRecipe, env: BuildEnv, kernels: dict[str, str],
            key: str, img: ImageSection) -> Node:
    debs = []
    if img.role == "dom0" and "xen-debs" in graph.nodes:
        debs.append("xen-debs")
    if img.kernel is not None and img.kernel in kernels:
        section = loaded.recipe.kernels[img.kernel]
        if section.package:
            debs.append(kernels[img.kernel])
    inputs: dict[str, str | list[str]] = {}
    if debs:
        repo = graph.add_shared(Node(name=f"apt-repo:{key}", stage="apt-repo", env=env,
                                     inputs={"debs": debs}))
        inputs["repo"] = repo.name
    options = rootfs_options(loaded, key, img, env)
    used = rootfs_elements(options["role"], options["access"], options["elements"])
    return graph.add_shared(Node(
        name=f"rootfs:{key}", stage="rootfs", env=env, inputs=inputs, options=options,
        files={"elements": own_folders(used, data_dir("image_elements"))},
        export=img.role == "guest" and not img.bootloader))


def rootfs_options(loaded: LoadedRecipe, key: str, img: ImageSection,
                   env: BuildEnv) -> dict[str, Any]:
    target, release = loaded.recipe.target, loaded.release
    iso = loaded.recipe.iso
    # the ISO's rootfs boots live and carries the installer (see plan/iso.py)
    live = [LIVE_ELEMENT] if iso is not None and iso.image == key else []
    if release is None:  # the loader reported the broken target already
        raise ValueError(f"{loaded.file}: no release file for its target")
    return {
        "name": key, "role": img.role, "release": env.release,
        "mirror": target.mirror or release.mirror,
        "security_mirror": target.security_mirror or release.security_mirror,
        "elements": [*live, *img.elements], "packages": list(img.packages),
        # a guest's filesystem is its disk; a dom0's grows into the disk the disk stage makes
        "size": img.size if img.role == "guest" and not img.bootloader else None,
        "access": img.access, "access_user": defaults.ACCESS_USER, "bridge": img.bridge,
        "hostname": key,
    }


def disk_options(loaded: LoadedRecipe, key: str, img: ImageSection,
                 guests: list[dict[str, Any]]) -> dict[str, Any]:
    r = loaded.recipe
    kernel = r.kernels.get(img.kernel) if img.kernel else None
    return {
        "name": key, "size": img.size, "formats": list(img.formats),
        "firmware": list(img.firmware), "esp_size": defaults.ESP_MIB,
        "xen_cmdline": r.hypervisor.cmdline if r.hypervisor else defaults.XEN_CMDLINE,
        "kernel_cmdline": (kernel.cmdline if kernel and kernel.cmdline is not None
                           else defaults.DOM0_KERNEL_CMDLINE),
        "linux_cmdline": defaults.LINUX_CMDLINE, "grub_timeout": defaults.GRUB_TIMEOUT,
        "guests": guests, "qcow2_compress": img.compress,
    }


@dataclass(frozen=True)
class GuestDisk:
    """A guests[] entry and what its guest recipe planned: the node whose output is the
    disk, the kernel command line, whether the disk boots its own bootloader."""

    entry: GuestSection
    node: str
    cmdline: str
    bootloader: bool


def _guest(gd: GuestDisk, host: ImageSection) -> dict[str, Any]:
    g = gd.entry
    return {"name": g.name, "type": g.type, "memory": g.memory, "vcpus": g.vcpus,
            "autostart": g.autostart, "bridge": g.bridge or host.bridge,
            "hostname": g.hostname or g.name, "cmdline": gd.cmdline,
            "tsc_mode": g.tsc_mode, "hap": g.hap,
            "pv_drivers": True if g.pv_drivers is None else g.pv_drivers,
            "firmware": g.firmware or "seabios",
            "boot": "disk" if gd.bootloader else "kernel"}


def _plan_guests(graph: Graph, loaded: LoadedRecipe, env: BuildEnv) -> list[GuestDisk]:
    """Each guests[] entry with what its guest recipe planned; a guest recipe named by
    several entries is planned once."""
    planned: dict[Path, tuple[str, str, bool]] = {}
    out = []
    for g in loaded.recipe.guests:
        sub = loaded.guests.get(g.name)
        if sub is None:  # the loader reported a broken guest recipe already
            continue
        if sub.file not in planned:
            planned[sub.file] = _plan_guest_recipe(graph, sub, env)
        out.append(GuestDisk(g, *planned[sub.file]))
    return out


def _plan_guest_recipe(graph: Graph, sub: LoadedRecipe, env: BuildEnv
                       ) -> tuple[str, str, bool]:
    """Plan a guest recipe into the host's graph: (the node of its disk, the kernel command
    line, whether the disk has a bootloader)."""
    env = BuildEnv(epoch=env.epoch, release=sub.recipe.target.release,
                   distribution=sub.recipe.target.distribution)  # the guest's own release
    kernels = plan_kernels(graph, sub, env)
    finals = plan_images(graph, sub, env, kernels)
    images = [(k, img) for k, img in sub.recipe.images.items() if img.role == "guest"]
    if not images:  # the loader's checks reject this; keep the planner total anyway
        raise ValueError(f"guest recipe {sub.file} has no image with role guest")
    key, img = images[0]
    kernel = sub.recipe.kernels.get(img.kernel) if img.kernel else None
    cmdline = kernel.cmdline if kernel and kernel.cmdline is not None \
        else defaults.GUEST_KERNEL_CMDLINE
    return finals[key], cmdline, img.bootloader
