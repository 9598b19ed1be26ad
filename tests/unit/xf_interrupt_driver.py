"""``xenforge`` with the engine's test stages, for tests/unit/test_interrupt.py: the real
command line (signal handling, JSON progress, exit codes, export) over a graph of the
fixture recipe's real ``source`` and ``tree`` nodes plus test nodes that use the tree.

Run as ``python xf_interrupt_driver.py XENFORGE-ARGS...`` (the recipe argument must be
``tests/recipes/fixtures/kernel.yaml``); the stages of :mod:`xf_test_stages` are registered
as test_build.py does for its subprocess builds.
"""

from __future__ import annotations

import sys

import xf_test_stages

from xenforge import plan as planner
from xenforge import stages
from xenforge.cli import app
from xenforge.plan.graph import Graph, Node, compute_ids
from xenforge.recipe.load import LoadedRecipe

stages.REGISTRY.update(xf_test_stages.TEST_STAGES)
_plan = planner.plan


def test_graph(loaded: LoadedRecipe) -> Graph:
    """source:mini -> tree:mini -> pack (tar), chroot (loop device, mounts, a chrooted
    command); slow (a stage of Python only, no command to kill)."""
    graph = _plan(loaded).only(["tree:mini"])
    graph.add(Node(name="pack", stage="pack-test", inputs={"tree": "tree:mini"}))
    graph.add(Node(name="chroot", stage="chroot-test", inputs={"tree": "tree:mini"},
                   options={"steps": 30}))
    graph.add(Node(name="slow", stage="slow-test",
                   options={"counter": "/dev/null", "seconds": 2.0}))
    compute_ids(graph)
    return graph


planner.plan = test_graph  # plan_many() of one recipe calls it too

if __name__ == "__main__":
    sys.exit(app.main(sys.argv[1:]))
