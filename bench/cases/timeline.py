"""Where a build's time goes: the picture of the recipe's largest build on record (the one of
its build log with the most nodes built: ``xenforge timeline`` draws it), and the parallelism
of the recipe from the cache's manifests, which record each node's build seconds however the
nodes were built: the sum of node times, the critical path through the graph, the CPU time
of each node's commands, and the lower bound of a build's wall on this machine's cores,
max(critical path, CPU work / cores) - node time / cores where a manifest has no CPU figure
(an object built before xenforge counted it, or on a host without cgroups)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bench.harness import Outcome, Settings, Table, Target, clock, xenforge
from xenforge.cache import Cache
from xenforge.export.timeline import (
    Span,
    events_from_log,
    log_builds,
    spans_from_events,
    write_svg,
)

NAME, TITLE, QUICK = "timeline", "Where the time goes: timeline and parallelism", True


def largest_build(log: Path) -> str:
    """The section of a build log (one per ``xenforge build``) with the most nodes built."""
    sections = log_builds(log.read_text(encoding="utf-8", errors="replace"))
    return max(sections, key=lambda s: len(re.findall(r"(?m)^\[[\d:]+\] built ", s)))


def critical_path(nodes: dict[str, list[str]], seconds: dict[str, float]) -> list[str]:
    """The chain of nodes, each needing the one before, with the most build seconds."""
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(name: str) -> tuple[float, list[str]]:
        if name not in best:
            before = [longest(d) for d in nodes.get(name, []) if d in nodes]
            total, chain = max(before, default=(0.0, []))
            best[name] = (total + seconds.get(name, 0.0), [*chain, name])
        return best[name]

    return max((longest(n) for n in nodes), default=(0.0, []))[1]


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    plan = json.loads(xenforge(settings, "plan", "--json", settings.recipe).check().stdout)
    recipe = plan["recipe"]
    cache = Cache(settings.cache)
    deps: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    recorded: list[Span] = []  # when the cache's objects were built, from their manifests
    for node in plan["nodes"]:
        refs = node["inputs"].values()
        deps[node["name"]] = sorted({r for ref in refs for r in ([ref] if isinstance(ref, str)
                                                                 else ref)})
        manifest = cache.store.read_manifest(node["id"])
        if manifest is not None:
            seconds[node["name"]] = float(manifest.get("seconds", 0.0))
            if manifest.get("cpu_seconds") is not None:
                cpu[node["name"]] = float(manifest["cpu_seconds"])
            end = float(manifest.get("finished", 0.0))
            took = seconds[node["name"]] + float(manifest.get("waited", 0.0))
            if end:
                recorded.append(Span(node["name"], end - took, end, "built"))
    missing = sorted(set(deps) - set(seconds))
    chain = critical_path(deps, seconds)
    total, path = sum(seconds.values()), sum(seconds.get(n, 0.0) for n in chain)
    cores = os.cpu_count() or 1
    counted = set(cpu) == set(seconds) and bool(cpu)
    work = sum(cpu.values()) if counted else total
    bound = max(path, work / cores)
    outcome.tables.append(Table(["figure (from the cache's manifests)", "value"], [
        ["nodes in the plan / with a manifest / with CPU time",
         f"{len(deps)} / {len(seconds)} / {len(cpu)}"],
        ["sum of node build times", clock(total)],
        ["CPU work of the nodes' commands", clock(sum(cpu.values())) if counted else
         "not counted for every node (node time used instead)"],
        ["critical path", clock(path) + " (" + " -> ".join(chain) + ")"],
        [f"lower bound of the wall on {cores} cores: max(critical path, "
         f"{'CPU work' if counted else 'node time'} / {cores})", clock(bound)],
    ]))
    outcome.tables.append(Table(["node", "build time", "CPU time", "on the critical path"], [
        [n, clock(s), clock(cpu[n]) if n in cpu else "-", "yes" if n in chain else ""]
        for n, s in sorted(seconds.items(), key=lambda kv: -kv[1])]))
    outcome.figures = {"node_seconds": seconds, "node_cpu_seconds": cpu,
                       "critical_path": chain, "critical_path_seconds": round(path, 1),
                       "sum_seconds": round(total, 1),
                       "cpu_seconds": round(sum(cpu.values()), 1) if counted else None,
                       "bound_seconds": round(bound, 1), "cores": cores,
                       "not_in_cache": missing}
    if missing:
        outcome.notes.append("not in the cache (no build time): " + ", ".join(missing))
    if recorded:
        origin = min(sp.start for sp in recorded)
        spans = sorted((Span(sp.node, sp.start - origin, sp.end - origin, "built")
                        for sp in recorded), key=lambda sp: (sp.start, sp.node))
        pic = write_svg(spans, settings.out / f"timeline-{recipe}-objects.svg",
                        f"{recipe}: when each of its cached objects was built")
        outcome.pictures.append(pic)
        span = max(sp.end for sp in spans)
        outcome.notes.append(
            f"The cache's objects of {recipe} were built over {clock(span)} (first start to "
            "last end, from their manifests: build seconds, waits for late inputs, finish "
            "time); by one build or by several (a test suite's), the picture shows which "
            "overlapped.")
        outcome.figures["objects_span_seconds"] = round(span, 1)
    log = settings.cache / "state" / "logs" / recipe / "build.log"
    if log.is_file():
        section = largest_build(log)
        spans = spans_from_events(events_from_log(section))
        built = [s for s in spans if s.status == "built" and ":" in s.node]
        if built:
            wall = max(s.end for s in built) - min(s.start for s in built)
            pic = write_svg(spans, settings.out / f"timeline-{recipe}.svg",
                            f"{recipe}: its largest build on record")
            outcome.pictures.append(pic)
            outcome.figures["largest_build"] = {
                "built": [s.node for s in built], "wall_seconds": round(wall, 1),
                "node_seconds": round(sum(s.seconds for s in built), 1)}
            parallel = sum(s.seconds for s in built) / wall if wall else 0.0
            outcome.notes.append(
                f"The largest build on record built {len(built)} of {len(deps)} nodes in "
                f"{clock(wall)} wall ({parallel:.2f}x parallel); the picture is its "
                "timeline (from the build log; a boot and the suites after it are drawn too).")
            if len(built) == len(deps):
                outcome.targets.append(Target("cold build wall against the 2-core bound",
                                              wall / bound, 1.2, "x"))
    return outcome
