"""Scaling with the number of guests: the recipe with 1, 2, 4 and 8 PV guests of its one guest
disk, planned against the cache. A guest sharing a built disk must cost no diskimage-builder
run: the report lists, per count, the nodes that would be built and the plan's time, and says
which of them are root filesystems (a DIB run each); not --quick, each variant is also built
(its wall, the nodes that ran).

And with the number of recipes in one build: the shipped host recipes planned together
(``xenforge plan A B ...``) against separately - nodes in the union against the sum (what
they share is built once), and the plan's time as recipes are added."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.harness import Outcome, Settings, Table, clock, copy_data, median, shipped, xenforge

NAME, TITLE, QUICK = "scaling", "Scaling with guests and with recipes", True
COUNTS = (1, 2, 4, 8)
#: recipes of recipes/ planned together, in this order (the first is the settings' recipe)
SHARING = ("xen-host-hvm.yaml", "xen-hypervisor.yaml", "xen-host-bookworm.yaml")


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    if not shipped(settings, outcome, "the variants are made from the shipped recipes"):
        return outcome
    recipes = copy_data(settings.work / "scaling") / "recipes"
    base = yaml.safe_load(settings.recipe.read_text())
    guests = base.get("guests") or []
    if not guests:
        outcome.notes.append(f"{settings.recipe.name} has no guests: nothing to scale")
        return outcome
    template = {k: v for k, v in guests[0].items() if k not in ("name", "type", "hap",
                                                                "tsc_mode")}
    rows: list[list[str]] = []
    figures: dict[str, object] = {}
    for count in COUNTS:
        recipe = recipes / f"{settings.recipe.stem}-g{count}.yaml"
        variant = {**base, "guests": [{**template, "name": f"guest-{i}", "type": "pv"}
                                      for i in range(1, count + 1)]}
        recipe.write_text(yaml.safe_dump(variant, sort_keys=False))
        plans = [xenforge(settings, "plan", recipe).check() for _ in range(settings.runs)]
        graph = json.loads(xenforge(settings, "plan", "--json", recipe).check().stdout)
        stages = {n["name"]: n["stage"] for n in graph["nodes"]}
        to_build = [ln.split()[0] for ln in plans[-1].stdout.splitlines()
                    if " build: " in ln]
        rootfs = [n for n in to_build if stages.get(n) == "rootfs"]
        rows.append([str(count), str(len(stages)), ", ".join(to_build) or "none",
                     ", ".join(rootfs) or "none", clock(median([p.wall for p in plans]))])
        figures[str(count)] = {"nodes": len(stages), "to_build": to_build, "rootfs": rootfs,
                               "plan_seconds": round(median([p.wall for p in plans]), 3)}
        if not settings.quick:
            built = xenforge(settings, "build", recipe, "-o", settings.work / "scaling-out",
                             "--progress", "json").check()
            rows[-1].append(f"{clock(built.wall)}: " + (", ".join(built.nodes("built"))
                                                         or "nothing built"))
            figures[str(count)].update(  # type: ignore[attr-defined]
                build_seconds=round(built.wall, 1), built=built.nodes("built"))
    outcome.tables.append(Table(["guests", "nodes", "to build (against this cache)",
                                 "of which root filesystems", "plan, median"]
                                + ([] if settings.quick else ["built: wall, nodes"]), rows))
    figures["recipes"] = _recipes_together(settings, outcome, recipes)
    outcome.figures = figures
    outcome.notes.append(f"Variants of {settings.recipe.name} whose guests are all PV guests of "
                         "its first guest's disk recipe; the plans were made against the "
                         f"cache {settings.cache} (copies of recipes/; the checkout is not "
                         "changed).")
    return outcome


def _recipes_together(settings: Settings, outcome: Outcome, recipes: Path) -> dict[str, object]:
    """Plans of 1..n recipes in one command against each on its own."""
    names = [settings.recipe.name, *(r for r in SHARING if r != settings.recipe.name
                                     and (recipes / r).is_file())]
    alone = {}
    for name in names:
        graph = json.loads(xenforge(settings, "plan", "--json", recipes / name).check().stdout)
        alone[name] = len(graph["nodes"])
    rows: list[list[str]] = []
    figures: dict[str, object] = {}
    for n in range(1, len(names) + 1):
        chosen = [recipes / name for name in names[:n]]
        plans = [xenforge(settings, "plan", *chosen).check() for _ in range(settings.runs)]
        graph = json.loads(xenforge(settings, "plan", "--json", *chosen).check().stdout)
        union, total = len(graph["nodes"]), sum(alone[name] for name in names[:n])
        wall = median([p.wall for p in plans])
        rows.append([" + ".join(names[:n]), str(total), str(union), str(total - union),
                     clock(wall)])
        figures[str(n)] = {"recipes": names[:n], "nodes_alone": total, "nodes_together": union,
                           "plan_seconds": round(wall, 3)}
    outcome.tables.append(Table(["recipes in one plan", "nodes, each alone", "nodes together",
                                 "shared (built once)", "plan, median"], rows))
    return figures
