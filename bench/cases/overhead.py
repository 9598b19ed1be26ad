"""Overhead per stage, cold: what each node of the recipe cost beyond the plain tools it
drives (make, dpkg-buildpackage, disk-image-create, mksquashfs, qemu-img ...).

Every command a stage runs is in its node log (``$ argv`` ... ``[xenforge] exit 0 after
Ns``), with the same tree, configuration and environment the tool saw; the node's wall
time is in its object's manifest (build seconds plus the time it waited for late inputs,
which the commands include). What is left - copying the input tree, writing the
configuration, hashing and committing the outputs, Python - is xenforge's overhead. This
reads the logs of the build that made each cached object (any recipe's); run it after a
cold build.

Not --quick: the hypervisor is also built twice more from the same tree and configuration,
in the same buildroot, one after the other: once by xenforge (a new cache holding only its
inputs, an empty compiler cache) and once by plain ``make`` (``CC=gcc``, no ccache), which
is the check that nothing outside the logged commands (the sandbox, ccache's misses) costs
what the logs cannot show. Target: within 5% of the plain tool."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Outcome, Settings, Table, Target, clock, xenforge
from xenforge.cache import Cache

NAME, TITLE, QUICK = "overhead", "Overhead per stage over the plain tools (cold)", True
#: the target: a node's overhead over its tools' time
TARGET_PERCENT = 5.0
#: stages whose nodes take long enough for a ratio to mean something
MEASURED = ("hypervisor", "toolstack", "kernel", "xen-debs", "rootfs", "disk", "iso",
            "buildroot")
EXIT = re.compile(r"^\[xenforge\] (?:exit \d+|killed by \S+|signal \S+) after ([\d.]+)s$",
                  re.M)
HEADER = re.compile(r"^\[xenforge\] node (\S+) id ([0-9a-f]{64})$", re.M)


@dataclass
class NodeCost:
    node: str
    stage: str
    wall: float  # build seconds + waits (the manifest's)
    tools: float  # the logged commands' seconds
    commands: int

    @property
    def overhead(self) -> float:
        return max(0.0, self.wall - self.tools)

    @property
    def percent(self) -> float:
        return 100.0 * self.overhead / self.tools if self.tools else 0.0


def commands_in(log_text: str) -> tuple[int, float]:
    """(number of commands, their seconds) of a node log's last build of the node (a log
    holds one build; a retried one starts again at its header)."""
    headers = list(HEADER.finditer(log_text))
    text = log_text[headers[-1].start():] if headers else log_text
    times = [float(m[1]) for m in EXIT.finditer(text)]
    return len(times), sum(times)


def node_logs(state: Path) -> dict[str, Path]:
    """node id -> the newest node log (under every recipe's logs) that built it."""
    found: dict[str, tuple[float, Path]] = {}
    for log in (state / "logs").glob("*/*.log"):
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                head = f.read(300)
        except OSError:
            continue
        m = HEADER.search(head)
        if m is None:
            continue
        mtime = log.stat().st_mtime
        if m[2] not in found or found[m[2]][0] < mtime:
            found[m[2]] = (mtime, log)
    return {node_id: path for node_id, (_t, path) in found.items()}


def from_logs(settings: Settings, plan: dict[str, object]) -> list[NodeCost]:
    cache = Cache(settings.cache)
    logs = node_logs(cache.state.root)
    costs = []
    nodes = plan["nodes"]
    assert isinstance(nodes, list)
    for node in nodes:
        if node["stage"] not in MEASURED:
            continue
        manifest = cache.store.read_manifest(node["id"])
        log = logs.get(node["id"])
        if manifest is None or log is None:
            continue
        count, tools = commands_in(log.read_text(encoding="utf-8", errors="replace"))
        wall = float(manifest.get("seconds", 0.0)) + float(manifest.get("waited", 0.0))
        costs.append(NodeCost(node["name"], node["stage"], wall, tools, count))
    return costs


def plain_hypervisor(settings: Settings, plan: dict[str, object]) -> tuple[float, float]:
    """(xenforge's cold hypervisor node seconds, plain make's seconds), same tree, config
    and buildroot, one after the other."""
    from xenforge.core import run as runner
    from xenforge.core.sandbox import Sandbox

    nodes = plan["nodes"]
    assert isinstance(nodes, list)
    hyp = next(n for n in nodes if n["stage"] == "hypervisor")
    cache = Cache(settings.cache)
    by_name = {n["name"]: n["id"] for n in nodes}
    with tempfile.TemporaryDirectory(prefix="xenforge-bench-", dir=settings.work) as tmp:
        fresh = Path(tmp) / "cache"
        for label in ("tree", "buildroot"):  # its inputs only, as hard links
            node_id = by_name[hyp["inputs"][label]]
            src = cache.object_dir(node_id)
            dest = Cache(fresh).object_dir(node_id)
            dest.parent.mkdir(parents=True, exist_ok=True)
            runner.run(["cp", "-a", "--link", src, dest])
        start = time.monotonic()
        xenforge(settings, "build", settings.recipe, "--target", hyp["name"], "-o",
                 Path(tmp) / "out", "--quiet", cache=fresh,
                 env={"XENFORGE_CCACHE_DIR": str(Path(tmp) / "ccache")}).check()
        ours = float((Cache(fresh).store.read_manifest(hyp["id"]) or {}).get(
            "seconds", time.monotonic() - start))
        # plain make: the same tree (a copy), the configuration xenforge ended with
        src = Path(tmp) / "src"
        shutil.copytree(Cache(fresh).out(by_name[hyp["inputs"]["tree"]]) / "tree", src,
                        symlinks=True)
        shutil.copy2(Cache(fresh).out(hyp["id"]) / "xen.config", src / "xen" / ".config")
        root = Cache(fresh).out(by_name[hyp["inputs"]["buildroot"]]) / "root"
        box = Sandbox(root=root, release="buildroot", writable=[src])
        make = ["make", "-C", str(src / "xen"), f"-j{os.cpu_count() or 2}", "CC=gcc"]
        runner.run(box.argv([*make, "olddefconfig"]))
        start = time.monotonic()
        runner.run(box.argv(make))
        plain = time.monotonic() - start
    return ours, plain


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    plan = json.loads(xenforge(settings, "plan", "--json", settings.recipe).check().stdout)
    costs = from_logs(settings, plan)
    rows = [[c.node, str(c.commands), clock(c.tools), clock(c.wall), f"{c.overhead:.1f}s",
             f"{c.percent:.1f}%"] for c in sorted(costs, key=lambda c: -c.wall)]
    outcome.tables.append(Table(["node", "commands", "in the tools", "node wall",
                                 "xenforge's own", "overhead"], rows))
    for c in costs:
        if c.stage in ("hypervisor", "toolstack", "kernel", "rootfs"):
            outcome.targets.append(Target(f"{c.node}: overhead over its tools",
                                          round(c.percent, 1), TARGET_PERCENT, "%"))
    outcome.figures = {"nodes": {c.node: {"tools": round(c.tools, 1), "wall": round(c.wall, 1),
                                          "commands": c.commands} for c in costs}}
    if not costs:
        outcome.notes.append("no node logs of built objects for this recipe in the cache")
    if not settings.quick:
        ours, plain = plain_hypervisor(settings, plan)
        outcome.tables.append(Table(["hypervisor, cold, same tree/config/buildroot", "time"], [
            ["xenforge build --target (empty ccache)", clock(ours)],
            ["plain make (CC=gcc)", clock(plain)],
            ["ratio", f"{ours / plain:.3f}x"]]))
        outcome.targets.append(Target("hypervisor: xenforge over plain make",
                                      round(100 * (ours / plain - 1), 1), TARGET_PERCENT, "%"))
        outcome.figures["hypervisor_rerun"] = {"xenforge": round(ours, 1),
                                               "plain_make": round(plain, 1)}
    return outcome
