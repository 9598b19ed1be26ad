"""The ``kernels:`` section: one ``kernel:<key>`` node per kernel, on the tree of its line
(kernels of one line with the same patches share the tree and the source)."""

from __future__ import annotations

from pathlib import Path

from xenforge.plan.buildroot import buildroot_node
from xenforge.plan.graph import BuildEnv, Graph, Node
from xenforge.plan.sources import tree_node
from xenforge.recipe.load import LoadedRecipe


def plan_kernels(graph: Graph, loaded: LoadedRecipe, env: BuildEnv) -> dict[str, str]:
    """Plan the recipe's kernels; returns kernels key -> node name."""
    names = {}
    for key, section in loaded.recipe.kernels.items():
        line = loaded.kernel_lines[key]
        tree = tree_node(graph, line.name, section.source or line.source,
                         section.patches or line.patches,
                         None if section.source else line.released)
        fragments = [frag if isinstance(frag, Path) else line.fragments[frag]
                     for frag in section.fragments]
        files: dict[str, Path | list[Path]] = {"fragments": fragments}
        if section.base_config is not None:
            files["baseconfig"] = section.base_config
        node = graph.add_shared(Node(
            name=f"kernel:{key}", stage="kernel", env=env,
            inputs={"tree": tree.name, "buildroot": buildroot_node(graph, loaded)},
            options={"base": section.base, "package": section.package,
                     "maintainer": loaded.recipe.maintainer, "distribution": env.release},
            files=files))
        names[key] = node.name
    return names
