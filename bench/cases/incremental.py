"""Incremental rebuilds after one-line changes, each in a copy of the recipe's data folders
built against the same cache: a package added to the dom0 image, a Kconfig option in the
guest fragment, a patch added to the Xen series, ``dom0_mem`` changed. For each: the nodes
that ran, the wall time, and that as a fraction of a cold build (the sum of the recipe's
node times from the cache's manifests, since every node of a cold build runs). Targets:
<= 10% of cold each, <= 5 s for ``dom0_mem``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.cases.timeline import critical_path
from bench.harness import (
    Outcome,
    Settings,
    Table,
    Target,
    clock,
    copy_data,
    shipped,
    xenforge,
)
from xenforge.cache import Cache

NAME, TITLE, QUICK = "incremental", "Incremental rebuilds after one-line changes", False
#: the patch added to the Xen series: a file of its own, so it applies to any tree
PATCH = """\
xenforge benchmark: a one-line change to the tree

--- /dev/null
+++ b/xenforge-bench.txt
@@ -0,0 +1 @@
+a one-line change, for xenforge's incremental benchmark
"""


def _edit_yaml(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _add_package(root: Path, recipe: str) -> str:
    def change(data: dict[str, object]) -> None:
        images = data["images"]
        assert isinstance(images, dict)
        for image in images.values():
            if image.get("role") == "dom0":
                image["packages"] = [*image.get("packages", []), "tree"]
    _edit_yaml(root / "recipes" / recipe, change)
    return "`tree` added to the dom0 image's packages"


def _kconfig(root: Path, recipe: str) -> str:
    with open(root / "kernel_patches" / "linux-6.12" / "domu.config", "a") as f:
        f.write("CONFIG_CRC_ITU_T=y\n")
    return "`CONFIG_CRC_ITU_T=y` added to the guest fragment (domu.config)"


def _xen_patch(root: Path, recipe: str) -> str:
    patches = root / "hypervisor" / "patches" / "xen-4.20"
    (patches / "9999-xenforge-bench.patch").write_text(PATCH)
    with open(patches / "series", "a") as f:
        f.write("9999-xenforge-bench.patch\n")
    return "a one-line patch appended to the Xen series"


def _dom0_mem(root: Path, recipe: str) -> str:
    base = root / "recipes" / "base.yaml"
    text = base.read_text()
    assert "dom0_mem=1024M,max:1024M" in text, "base.yaml's Xen command line changed"
    base.write_text(text.replace("dom0_mem=1024M,max:1024M", "dom0_mem=1000M,max:1000M"))
    return "`dom0_mem` 1024M -> 1000M on the Xen command line"


CHANGES = [("package", _add_package), ("kconfig", _kconfig), ("xen-patch", _xen_patch),
           ("dom0_mem", _dom0_mem)]


def cold_seconds(settings: Settings, recipe: Path) -> float:
    """A cold build's wall, at its shortest: the lower bound of the recipe's build on this
    machine's cores from the node times in the cache's manifests - max(critical path, node
    time / cores) - so that a rebuild's fraction of it errs high, not low."""
    plan = json.loads(xenforge(settings, "plan", "--json", recipe).check().stdout)
    cache = Cache(settings.cache)
    seconds = {n["name"]: float((cache.store.read_manifest(n["id"]) or {}).get("seconds", 0.0))
               for n in plan["nodes"]}
    deps = {n["name"]: sorted({r for ref in n["inputs"].values()
                               for r in ([ref] if isinstance(ref, str) else ref)})
            for n in plan["nodes"]}
    path = sum(seconds[n] for n in critical_path(deps, seconds))
    return max(path, sum(seconds.values()) / (os.cpu_count() or 1))


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    if not shipped(settings, outcome, "the incremental changes edit copies of the shipped "
                   "data folders"):
        return outcome
    cold = cold_seconds(settings, settings.recipe)
    rows, figures = [], {}
    for name, change in CHANGES:
        root = copy_data(settings.work / f"incremental-{name}")
        what = change(root, settings.recipe.name)
        recipe = root / "recipes" / settings.recipe.name
        build = xenforge(settings, "build", recipe, "-o", root / "out", "--progress",
                         "json").check()
        ran = build.nodes("built")
        rows.append([what, ", ".join(ran) or "none", clock(build.wall),
                     f"{100 * build.wall / cold:.1f}%" if cold else "-"])
        figures[name] = {"change": what, "built": ran, "wall": round(build.wall, 1),
                         "cpu": round(build.cpu, 1),
                         "fraction_of_cold": round(build.wall / cold, 4) if cold else None}
        outcome.targets.append(Target(f"{name}: fraction of a cold build",
                                      100 * build.wall / cold if cold else 0, 10, "%"))
        if name == "dom0_mem":
            outcome.targets.append(Target("dom0_mem: wall", build.wall, 5))
        shutil.rmtree(root / "out", ignore_errors=True)
    outcome.tables.append(Table(["one-line change", "nodes that ran", "wall",
                                 "of a cold build"], rows))
    outcome.figures = {"cold_node_seconds": round(cold, 1), **figures}
    outcome.notes.append(f"Cold build: at least {clock(cold)} on this machine (the lower "
                         "bound from the recipe's manifests, see timeline). "
                         "The objects these builds add stay in the cache until `xenforge "
                         "cache gc`.")
    return outcome
