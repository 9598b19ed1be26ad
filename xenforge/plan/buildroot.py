"""The target release's buildroot: one ``buildroot:<distribution>-<release>`` node per
release a graph builds for, an input of every stage that runs in one (Stage.buildroot)."""

from __future__ import annotations

from xenforge.plan.graph import Graph, Node
from xenforge.recipe.load import LoadedRecipe


def buildroot_node(graph: Graph, loaded: LoadedRecipe) -> str:
    """The name of the buildroot node for ``loaded``'s target (added once)."""
    release = loaded.release
    if release is None:  # the loader reported the broken target already
        raise ValueError(f"{loaded.file}: no release file for its target")
    target = loaded.recipe.target
    node = graph.add_shared(Node(
        name=f"buildroot:{release.distribution}-{release.release}", stage="buildroot",
        options={"distribution": release.distribution, "release": release.release,
                 "mirror": target.mirror or release.mirror,
                 "security_mirror": target.security_mirror or release.security_mirror,
                 "security_suite": release.security_suite,
                 "packages": list(release.buildroot.packages)}))
    return node.name
