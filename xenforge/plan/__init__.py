"""Recipe -> build graph: one planner per recipe section (``xen``, ``kernels``, ``images``)
over the graph model of :mod:`xenforge.plan.graph`.

The build environment every byte-producing node depends on is derived here, once:
``SOURCE_DATE_EPOCH`` (:func:`source_date_epoch`) and the target release.
"""

from __future__ import annotations

from xenforge import defaults
from xenforge.plan.graph import BuildEnv, Graph
from xenforge.plan.graph import compute_ids as compute_ids
from xenforge.plan.images import plan_images
from xenforge.plan.kernels import plan_kernels
from xenforge.plan.xen import plan_hypervisor
from xenforge.recipe.load import LoadedRecipe


def source_date_epoch(loaded: LoadedRecipe) -> int:
    """The build's SOURCE_DATE_EPOCH: the recipe's ``epoch``, else the newest ``released``
    date of the pinned sources it builds (its guests' included), else the default."""
    if loaded.recipe.epoch is not None:
        return loaded.recipe.epoch
    dates = []
    for r in (loaded, *loaded.guests.values()):
        if r.hypervisor_spec is not None and r.hypervisor_spec.released is not None:
            dates.append(r.hypervisor_spec.released)
        dates += [line.released for line in r.kernel_lines.values()
                  if line.released is not None]
    return max(dates, default=defaults.EPOCH)


def build_env(loaded: LoadedRecipe) -> BuildEnv:
    releases = {img.distro.release for img in loaded.recipe.images.values()}
    release = releases.pop() if len(releases) == 1 else defaults.RELEASE
    return BuildEnv(epoch=source_date_epoch(loaded), release=release)


def plan(loaded: LoadedRecipe) -> Graph:
    graph = Graph(recipe=loaded.name)
    env = build_env(loaded)
    plan_hypervisor(graph, loaded, env)
    kernels = plan_kernels(graph, loaded, env)
    plan_images(graph, loaded, env, kernels)
    compute_ids(graph)
    return graph
