"""No-op rebuild: ``xenforge build`` of the recipe with every node cached, and ``xenforge
plan`` of it; medians over several runs. Target: the build <= 1 s. One more run under
cProfile says where the time goes."""

from __future__ import annotations

import pstats
import shutil

from bench.harness import (
    XENFORGE,
    Outcome,
    Settings,
    Table,
    Target,
    clock,
    median,
    timed,
    xenforge,
)

NAME, TITLE, QUICK = "noop", "No-op rebuild (everything cached)", True
#: how many functions of the profile the report lists
TOP = 8


def run(settings: Settings) -> Outcome:
    out = settings.work / "noop-out"
    first = xenforge(settings, "build", settings.recipe, "-o", out, "--progress", "json").check()
    built = first.nodes("built")
    if built:  # the harness measures a cached recipe: the first run builds what was missing
        first = xenforge(settings, "build", settings.recipe, "-o", out, "--progress",
                         "json").check()
    builds = [xenforge(settings, "build", settings.recipe, "-o", out, "--progress", "json")
              .check() for _ in range(settings.runs)]
    plans = [xenforge(settings, "plan", settings.recipe).check() for _ in range(settings.runs)]
    validates = [xenforge(settings, "validate", settings.recipe).check()
                 for _ in range(settings.runs)]
    nodes = sum(1 for e in builds[-1].events if e.get("event") == "cached")
    artifacts = sum(1 for e in builds[-1].events if e.get("event") == "artifact")
    wall = median([b.wall for b in builds])
    outcome = Outcome(NAME, TITLE)
    outcome.tables.append(Table(["command", "median wall", "median CPU", "runs"], [
        ["xenforge validate", clock(median([v.wall for v in validates])),
         clock(median([v.cpu for v in validates])), str(len(validates))],
        ["xenforge plan", clock(median([p.wall for p in plans])),
         clock(median([p.cpu for p in plans])), str(len(plans))],
        [f"xenforge build ({nodes} nodes cached, {artifacts} artifacts exported)",
         clock(wall), clock(median([b.cpu for b in builds])), str(len(builds))],
    ]))
    outcome.targets.append(Target("no-op build, median wall", wall, 1.0))
    outcome.figures = {"build_wall": [round(b.wall, 3) for b in builds],
                       "plan_wall": [round(p.wall, 3) for p in plans],
                       "validate_wall": [round(v.wall, 3) for v in validates],
                       "nodes": nodes, "artifacts": artifacts,
                       "built_before_measuring": built}
    outcome.tables.append(_profile(settings))
    outcome.notes.append(f"A build that finds everything cached still checks each object "
                         f"before it is exported and exports {artifacts} artifacts (hard "
                         "links) with a fresh SHA256SUMS; the profile shows which of these "
                         "costs what.")
    shutil.rmtree(out, ignore_errors=True)
    return outcome


def _profile(settings: Settings) -> Table:
    """One more no-op build under cProfile: the functions with the most cumulative time."""
    prof = settings.work / "noop.prof"
    timed([XENFORGE.parent / "python", "-m", "cProfile", "-o", prof, XENFORGE, "--cache-dir",
           settings.cache, "build", settings.recipe, "-o", settings.work / "noop-prof-out",
           "--quiet"]).check()
    stats = pstats.Stats(str(prof))
    rows = []
    for (path, line, func), (_cc, _nc, tt, ct, _callers) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][3]):  # type: ignore[attr-defined]
        where = path.split("/site-packages/")[-1].split("/xenforge/")[-1]
        if "xenforge" not in path or func.startswith("<") or func in ("main", "cmd_build"):
            continue
        rows.append([f"`{func}` ({where}:{line})", clock(ct), clock(tt)])
        if len(rows) == TOP:
            break
    return Table(["function (cProfile, one no-op build)", "cumulative", "own"], rows)
