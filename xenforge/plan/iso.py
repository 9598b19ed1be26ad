"""The ``iso:`` section: one ``iso`` node around the dom0 image's root filesystem.

::

    iso:NAME    the ``iso`` stage: inputs rootfs = rootfs:<iso.image>, guests = the guest
                rootfs nodes of that image's disk (when iso.guests); options: label, modes,
                firmware, the command lines and guests of the image's disk, the file name

The rootfs is the disk's own (one diskimage-builder run feeds the disk and the ISO); the
planner of ``images:`` adds the ``xenforge-live`` element to it (its initramfs boots live,
its system carries the installer). The command lines and guests are read off the image's
``disk`` node, so the ISO's and the disk's always agree.
"""

from __future__ import annotations

from xenforge import defaults
from xenforge.plan.graph import BuildEnv, Graph, Node
from xenforge.recipe.load import LoadedRecipe

#: the element a rootfs gets when an ISO is made of it (image_elements/xenforge-live)
LIVE_ELEMENT = "xenforge-live"


def plan_iso(graph: Graph, loaded: LoadedRecipe, env: BuildEnv) -> str | None:
    """Plan the recipe's ISO; returns its node name (None without ``iso:``)."""
    iso = loaded.recipe.iso
    if iso is None:
        return None
    disk = graph.nodes.get(f"image:{iso.image}")
    if disk is None:  # the loader's checks reject an ISO of a non-dom0 image
        raise ValueError(f"{loaded.file}: iso.image {iso.image!r} is no dom0 image")
    d = disk.options
    guests = disk.inputs.get("guests", []) if iso.guests else []
    node = graph.add_shared(Node(
        name=f"iso:{iso.image}", stage="iso", env=env,
        inputs={"rootfs": disk.inputs["rootfs"], "guests": guests},
        options={
            "name": iso.name or loaded.name, "version": iso.version, "label": iso.label,
            "modes": list(iso.modes), "firmware": list(iso.firmware),
            "xen_cmdline": d["xen_cmdline"], "kernel_cmdline": d["kernel_cmdline"],
            "linux_cmdline": d["linux_cmdline"], "grub_timeout": d["grub_timeout"],
            "menu_timeout": defaults.ISO_MENU_TIMEOUT,
            "esp_size": d["esp_size"], "access_user": defaults.ACCESS_USER,
            "guests": d["guests"] if iso.guests else [],
            "compression_level": iso.compression_level,
        }))
    return node.name
