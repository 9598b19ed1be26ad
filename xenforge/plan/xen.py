"""The ``hypervisor:`` section: the hypervisor, the toolstack and their Debian packages.

Nodes: ``source:<spec>``, ``tree:<spec>``, ``hypervisor``, ``toolstack`` and ``xen-debs``
(when the section asks for the toolstack and packages)."""

from __future__ import annotations

from xenforge.core.data import data_dir
from xenforge.plan.buildroot import buildroot_node
from xenforge.plan.graph import BuildEnv, Graph, Node
from xenforge.plan.sources import describe, tree_node
from xenforge.recipe.load import LoadedRecipe


def plan_hypervisor(graph: Graph, loaded: LoadedRecipe, env: BuildEnv) -> None:
    section, spec = loaded.recipe.hypervisor, loaded.hypervisor_spec
    if section is None or spec is None:
        return
    source = section.source or spec.source
    tree = tree_node(graph, spec.name, source, section.patches or spec.patches,
                     None if section.source else spec.released)
    buildroot = buildroot_node(graph, loaded)
    hyp = graph.add_shared(Node(
        name="hypervisor", stage="hypervisor", env=env,
        inputs={"tree": tree.name, "buildroot": buildroot},
        options={"version": spec.version, "debug": section.debug},
        files={"config": [*spec.config, *section.config]}))
    if not section.toolstack:
        return
    tools = graph.add_shared(Node(
        name="toolstack", stage="toolstack", env=env,
        inputs={"tree": tree.name, "buildroot": buildroot},
        options={"version": spec.version, "configure": spec.toolstack.configure}))
    if section.packages:
        graph.add_shared(Node(
            name="xen-debs", stage="xen-debs", env=env,
            inputs={"hypervisor": hyp.name, "toolstack": tools.name,
                    "buildroot": buildroot},
            options={"version": spec.version, "source": describe(source),
                     "package_version": spec.package_version or "",
                     "maintainer": loaded.recipe.maintainer,
                     "distribution": env.release},
            files={"templates": data_dir("templates") / "xen-debs"}))
