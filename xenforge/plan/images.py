"""Planning of the ``images:`` and ``guests:`` sections: one ``apt-repo`` and one ``image``
node per image, plus the nodes of every guest recipe a dom0 image carries.

Meant to run after the hypervisor and kernel planners (it consumes their ``xen-debs`` and
``kernel:<key>`` nodes); :data:`xenforge.plan.SECTION_PLANNERS` lists it last.

Nodes per image ``NAME``::

    apt-repo:NAME   inputs deb0.. = xen-debs (dom0 images), kernel:<images.NAME.kernel>
    image:NAME      inputs repo = apt-repo:NAME, guest0.. = the guests' image nodes
                    files  elements = image_elements/
                    options: the image section, the hypervisor's and kernel's cmdline,
                    the guests' xl settings (dom0 images)

A guest recipe is planned on its own and merged in: a node with the same id as one already
in the graph (the same kernel built for host and guest) is shared; a different node whose
name is taken is renamed ``NAME@GUEST``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenforge.core.data import data_dir
from xenforge.recipe.model import GuestSection, ImageSection

if TYPE_CHECKING:
    from xenforge.plan.graph import Graph
    from xenforge.recipe.load import LoadedRecipe

#: xenforge's own diskimage-builder elements
IMAGE_ELEMENTS = data_dir("image_elements")
DEFAULT_KERNEL_CMDLINE = "console=hvc0"


def plan_images(graph: Graph, loaded: LoadedRecipe) -> None:
    from xenforge.plan.graph import Node

    r = loaded.recipe
    if not r.images:
        return
    guests: list[tuple[GuestSection, str]] = []
    if any(img.role == "dom0" for img in r.images.values()):
        for g in r.guests:
            sub = loaded.guests.get(g.name)
            if sub is not None:  # the loader reported a broken guest recipe already
                guests.append((g, _merge_guest(graph, sub, g.name)))
    for key, img in r.images.items():
        inputs: dict[str, str] = {}
        debs = _debs(graph, loaded, img)
        if debs:
            repo = graph.add(Node(name=f"apt-repo:{key}", stage="apt-repo",
                                  inputs={f"deb{i}": d for i, d in enumerate(debs)}))
            inputs["repo"] = repo.name
        options = image_options(loaded, key, img)
        if img.role == "dom0":
            options["guests"] = [
                {"name": g.name, "type": g.type, "memory": g.memory, "vcpus": g.vcpus,
                 "autostart": g.autostart, "bridge": g.bridge,
                 "tsc_mode": g.tsc_mode, "hap": g.hap} for g, _ in guests]
            inputs.update({f"guest{i}": node for i, (_, node) in enumerate(guests)})
        graph.add(Node(name=f"image:{key}", stage="image", inputs=inputs, options=options,
                       files={"elements": IMAGE_ELEMENTS}))


def image_options(loaded: LoadedRecipe, key: str, img: ImageSection) -> dict[str, Any]:
    r = loaded.recipe
    kernel = r.kernels.get(img.kernel) if img.kernel else None
    options: dict[str, Any] = {
        "name": key, "role": img.role, "release": img.distro.release,
        "mirror": img.distro.mirror, "security_mirror": img.distro.security_mirror,
        "elements": list(img.elements), "packages": list(img.packages), "size": img.size,
        "formats": list(img.formats), "firmware": list(img.firmware), "access": img.access,
        "kernel_cmdline": (kernel.cmdline if kernel and kernel.cmdline
                           else DEFAULT_KERNEL_CMDLINE),
        "hostname": key,
    }
    if img.role == "dom0" and r.hypervisor is not None:
        options["xen_cmdline"] = r.hypervisor.cmdline
    return options


def _debs(graph: Graph, loaded: LoadedRecipe, img: ImageSection) -> list[str]:
    r = loaded.recipe
    debs = []
    if img.role == "dom0" and "xen-debs" in graph.nodes:
        debs.append("xen-debs")
    if img.kernel is not None:
        section = r.kernels.get(img.kernel)
        if section is not None and section.package and f"kernel:{img.kernel}" in graph.nodes:
            debs.append(f"kernel:{img.kernel}")
    return debs


def _merge_guest(graph: Graph, sub: LoadedRecipe, guest: str) -> str:
    """Plan a guest recipe and merge its nodes; return the name of its guest image node."""
    from xenforge.plan.graph import compute_ids, plan

    subgraph = plan(sub)
    compute_ids(graph)
    by_id = {n.id: n.name for n in graph.nodes.values()}
    renamed: dict[str, str] = {}
    for original, node in list(subgraph.nodes.items()):
        node.inputs = {label: renamed[dep] for label, dep in node.inputs.items()}
        if node.id in by_id:  # the same work is already planned: share it
            renamed[original] = by_id[node.id]
            continue
        if original in graph.nodes:
            node.name = f"{original}@{guest}"
        graph.add(node)
        by_id[node.id] = renamed[original] = node.name
    images = [k for k, img in sub.recipe.images.items() if img.role == "guest"]
    if not images:  # the loader's checks reject this; keep the planner total anyway
        raise ValueError(f"guest recipe {sub.file} has no image with role guest")
    return renamed[f"image:{images[0]}"]
