"""Kernels for the integration tests, cached in ``$XENFORGE_TEST_CACHE`` like the Xen nodes
(see ``_xenbuild.py``).

The default recipe's two kernels (dom0 = [base, dom0], guest = [base, domu], both from ONE
tree node: linux-source-6.12 with the line's patch series) are its own nodes, built by the
executor; ``build_kernel`` builds a variant through the kernel stage directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from _xenbuild import RECIPE, RELEASE, Built, buildroot, recipe_node, run_stage

from xenforge.cache import Cache
from xenforge.recipe.load import load_recipe

#: the default recipe's kernel line (kernel_patches/linux-6.12)
LINE = load_recipe(RECIPE).recipe.kernels["dom0"].line


def fragment(name: str) -> Path:
    return LINE / f"{name}.config"


def kernel_tree(cache: Cache) -> Built:
    name = yaml.safe_load((LINE / "line.yaml").read_text())["name"]
    return recipe_node(cache, f"tree:{name}")


#: the packaging settings the planner passes every kernel
PACKAGING = {"maintainer": "xenforge <xenforge@example.org>", "distribution": RELEASE}


def build_kernel(cache: Cache, tree: Built, fragments: list[Path], **options: Any) -> Built:
    return run_stage(cache, "kernel", {"base": "tinyconfig", **PACKAGING, **options},
                     inputs={"tree": tree, "buildroot": buildroot(cache)},
                     files={"fragments": list(fragments)}, node="kernel:test")


def dom0_kernel(cache: Cache, tree: Built) -> Built:
    """The default recipe's dom0 kernel ([base, dom0]) on ``tree``."""
    return recipe_node(cache, "kernel:dom0")


def guest_kernel(cache: Cache, tree: Built) -> Built:
    """The default recipe's guest kernel ([base, domu]) on ``tree``."""
    return recipe_node(cache, "kernel:guest")
