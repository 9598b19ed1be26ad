"""Recipe -> build graph: one planner per recipe section (``xen``, ``kernels``, ``images``, ``iso``)
over the graph model of :mod:`xenforge.plan.graph`.

The build environment every byte-producing node depends on is derived here, in one
place: ``SOURCE_DATE_EPOCH`` (:func:`assign_epochs`) and the target release.
"""

from __future__ import annotations

from dataclasses import replace

from xenforge import defaults
from xenforge.core.errors import InputError
from xenforge.plan.graph import BuildEnv, Graph
from xenforge.plan.graph import compute_ids as compute_ids
from xenforge.plan.images import plan_images
from xenforge.plan.iso import plan_iso
from xenforge.plan.kernels import plan_kernels
from xenforge.plan.xen import plan_hypervisor
from xenforge.recipe.load import LoadedRecipe


def assign_epochs(graph: Graph, override: int | None) -> None:
    """Each node's SOURCE_DATE_EPOCH: the newest ``released`` date of the pinned sources it is
    made from (a kernel's is its Linux source's, a disk's the newest of everything in it), so
    a node of two recipes gets one date and is shared; the recipe's ``epoch`` instead when
    it sets one; :data:`xenforge.defaults.EPOCH` for what no dated source goes into."""
    dates: dict[str, int | None] = {}
    for node in graph.nodes.values():  # dependency order
        found = [node.released, *(dates[d] for d in node.deps())]
        known = [d for d in found if d is not None]
        dates[node.name] = max(known) if known else None
        if node.env is not None:
            epoch = override if override is not None else (dates[node.name] or defaults.EPOCH)
            node.env = replace(node.env, epoch=epoch)


def build_env(loaded: LoadedRecipe) -> BuildEnv:
    """The target of every node of ``loaded`` (the epoch is set per node later)."""
    target = loaded.recipe.target
    return BuildEnv(epoch=defaults.EPOCH, release=target.release,
                    distribution=target.distribution)


def plan(loaded: LoadedRecipe) -> Graph:
    graph = Graph(recipe=loaded.name)
    env = build_env(loaded)
    plan_hypervisor(graph, loaded, env)
    kernels = plan_kernels(graph, loaded, env)
    plan_images(graph, loaded, env, kernels)
    plan_iso(graph, loaded, env)
    assign_epochs(graph, loaded.recipe.epoch)
    compute_ids(graph)
    return graph


def plan_many(loadeds: list[LoadedRecipe]) -> Graph:
    """One graph for several recipes (a matrix build): a node two recipes have in common
    (the same id) is one node; one that differs under a name another recipe took is named
    ``RECIPE/NAME``. :meth:`Graph.view` gives each recipe's part back."""
    names = [ld.name for ld in loadeds]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"two recipes are named {twice[0]}",
                         hint="give each recipe of a matrix build its own `name:`")
    if len(loadeds) == 1:
        return plan(loadeds[0])
    matrix = Graph(recipe="+".join(names))
    by_id: dict[str, str] = {}
    for loaded in loadeds:
        own = plan(loaded)
        renamed: dict[str, str] = {}
        for name, node in own.nodes.items():
            if node.id in by_id:  # the same work: shared
                renamed[name] = by_id[node.id]
            else:
                new = name if name not in matrix.nodes else f"{loaded.name}/{name}"
                node.name = new
                node.inputs = {label: renamed[ref] if isinstance(ref, str)
                               else [renamed[r] for r in ref]
                               for label, ref in node.inputs.items()}
                matrix.nodes[new] = node
                by_id[node.id] = renamed[name] = new
            matrix.origins.setdefault(renamed[name], []).append((loaded.name, name))
    return matrix
