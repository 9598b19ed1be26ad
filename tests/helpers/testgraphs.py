"""Recipes made of test stages, built by the real ``xenforge build``.

A recipe file is a minimal valid recipe (``schema: 1``, ``name: NAME``); its graph comes
from a spec (recipe name -> nodes) instead of the recipe's sections: :func:`planner` wraps
:func:`xenforge.plan.plan`, everything else (loading, resolving, the executor, the export,
exit codes) is xenforge's own. In a test: ``monkeypatch.setattr(xenforge.plan, "plan",
planner(spec))`` plus the stages of :func:`test_stages`; in a subprocess:
``python tests/helpers/xf_build.py SPEC.json XENFORGE-ARGS...``.

A node is ``{"name", "stage", "options", "inputs", "export"}`` as :class:`xenforge.plan.graph.Node`
takes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parent
UNIT = HELPERS.parent / "unit"
if str(UNIT) not in sys.path:  # xf_test_stages lives next to the unit tests
    sys.path.insert(0, str(UNIT))

import xf_test_stages  # noqa: E402

from xenforge.plan.graph import Graph, Node, compute_ids  # noqa: E402
from xenforge.recipe.load import LoadedRecipe  # noqa: E402

Spec = dict[str, list[dict[str, Any]]]


def test_stages() -> dict[str, str]:
    """The engine's test stages and the fault tests' own (name -> "module:Class")."""
    return {**xf_test_stages.TEST_STAGES, "fill-test": "xf_fault_stages:FillStage"}


def graph_of(recipe: str, nodes: list[dict[str, Any]]) -> Graph:
    g = Graph(recipe=recipe)
    for n in nodes:
        g.add(Node(name=n["name"], stage=n["stage"], options=dict(n.get("options", {})),
                   inputs=dict(n.get("inputs", {})), export=n.get("export", True)))
    compute_ids(g)
    return g


def planner(spec: Spec, real: Callable[[LoadedRecipe], Graph] | None = None
            ) -> Callable[[LoadedRecipe], Graph]:
    """A ``plan`` that gives the recipes named in ``spec`` their test graph (others: ``real``,
    by default xenforge's planner)."""
    if real is None:
        import xenforge.plan

        real = xenforge.plan.plan

    def plan(loaded: LoadedRecipe) -> Graph:
        if loaded.name in spec:
            return graph_of(loaded.name, spec[loaded.name])
        assert real is not None
        return real(loaded)

    return plan


def write_recipe(folder: Path, name: str) -> Path:
    """A minimal valid recipe file named ``name`` (its graph comes from the spec)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"schema: 1\nname: {name}\n")
    return path
