"""Build kernels through the kernel stage for the integration tests (source -> tree ->
kernel), cached in ``$XENFORGE_TEST_CACHE`` like the Xen stages (see ``_xenbuild.py``).

The default recipe's two kernels: dom0 = [base, dom0], guest = [base, domu], both from ONE
tree node (linux-source-6.1 with the line's patch series).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from _xenbuild import REPO, Built, run_stage

from xenforge.cache import Cache

LINE = REPO / "kernel_patches" / "linux-6.1"


def fragment(name: str) -> Path:
    return LINE / f"{name}.config"


def kernel_tree(cache: Cache) -> Built:
    line: dict[str, Any] = yaml.safe_load((LINE / "line.yaml").read_text())
    source = run_stage(cache, "source", {"spec": line["source"]})
    return run_stage(cache, "tree", {}, inputs={"source": source}, files={"patches": LINE})


def build_kernel(cache: Cache, tree: Built, fragments: list[Path], **options: Any) -> Built:
    files = {f"fragment{i}": p for i, p in enumerate(fragments)}
    return run_stage(cache, "kernel", {"base": "tinyconfig", **options}, inputs={"tree": tree},
                     files=files, node="kernel:test")


def dom0_kernel(cache: Cache, tree: Built) -> Built:
    return build_kernel(cache, tree, [fragment("base"), fragment("dom0")])


def guest_kernel(cache: Cache, tree: Built) -> Built:
    return build_kernel(cache, tree, [fragment("base"), fragment("domu")])
