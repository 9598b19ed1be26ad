"""``xenforge validate | schema | recipes | plan | build``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from xenforge.cli.common import cache_of, recipe_path, remote_of, shipped_recipes
from xenforge.cli.progress import JsonProgress, Progress
from xenforge.plan.graph import Graph
from xenforge.recipe.load import LoadedRecipe

if TYPE_CHECKING:
    from xenforge.build.executor import NodeResult
    from xenforge.export.timeline import Span


def cmd_validate(args: argparse.Namespace) -> int:
    from xenforge.core.errors import Problem, ValidationFailed
    from xenforge.recipe.load import load_recipe

    problems: list[Problem] = []
    for f in args.recipes:
        try:
            load_recipe(recipe_path(f))
            print(f"{f}: ok")
        except ValidationFailed as exc:
            # a data file several recipes share is reported once
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ValidationFailed(problems)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from xenforge.recipe.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from xenforge.core.errors import ValidationFailed
    from xenforge.recipe.load import load_recipe

    for path in shipped_recipes():
        try:
            description = load_recipe(path).recipe.description
        except ValidationFailed:
            description = "(does not validate)"
        print(f"{path.stem:<24} {description}")
    print(f"\n(in {path.parent}; `xenforge build NAME` builds one from any directory)"
          if shipped_recipes() else "no recipes shipped")
    return 0


def plan_of(args: argparse.Namespace) -> Graph:
    from xenforge.plan import plan

    return plan(_loaded(args.recipe))


def _loaded(arg: str) -> LoadedRecipe:
    from xenforge.recipe.load import load_recipe

    return load_recipe(recipe_path(arg))


def cmd_plan(args: argparse.Namespace) -> int:
    from xenforge.build.resolve import local_nodes, remote_nodes, states
    from xenforge.plan import plan_many
    from xenforge.plan.graph import explain_change

    loadeds = [_loaded(r) for r in args.recipes]
    loaded = loadeds[0]
    graph = plan_many(loadeds)
    cache = cache_of(args)
    try:
        log: Path | None = cache.state.logs(graph.recipe) / "remote.log"
    except OSError:  # a cache (and its state) the user may only read: plan writes nothing
        log = None
    remote = remote_of(args, loaded, cache, log)
    state = states(graph, local_nodes(graph, cache), remote_nodes(graph, remote))
    if args.json:
        data = graph.to_json()
        for n in data["nodes"]:
            n["cached"] = state[n["name"]] == "local"
            n["state"] = state[n["name"]]
        print(json.dumps(data, indent=2))
        return 0
    where = f", remote cache {remote.url}" if remote else ""
    counts = {s: list(state.values()).count(s) for s in ("local", "remote", "build")}
    print(f"recipe {graph.recipe}: {len(graph.nodes)} nodes ({counts['local']} cached, "
          f"{counts['remote']} remote, {counts['build']} to build){where}")
    for node in graph.nodes.values():
        shown = {"local": "cached", "remote": "remote (fetched, not built)",
                 "unneeded": "not needed (what uses it is cached)"}.get(state[node.name])
        if shown is None:
            recipe, own = graph.origins_of(node.name)[0]
            shown = "build: " + explain_change(node, cache.read_ref(recipe, own))
        deps = ", ".join(node.deps())
        print(f"  {node.name:<22} {node.id[:12]}  {shown}" + (f"  <- {deps}" if deps else ""))
    return 0


def _progress(args: argparse.Namespace, logfile: Path) -> Progress:
    mode = args.progress or ("quiet" if args.quiet else "plain" if args.plain else "auto")
    if mode == "json":
        return JsonProgress(logfile=logfile)
    return Progress(quiet=mode == "quiet", plain={"plain": True, "live": False}.get(mode),
                    logfile=logfile)


def cmd_build(args: argparse.Namespace) -> int:
    from xenforge.build.executor import Executor
    from xenforge.build.resolve import resolve
    from xenforge.cache.writable import check_writable
    from xenforge.core.errors import InputError
    from xenforge.core.units import human_size
    from xenforge.export.artifacts import Release, check_destination, export
    from xenforge.export.release import check_key, reseal, signing_key
    from xenforge.plan import plan_many
    from xenforge.recipe.model import TestsSection

    start, started = time.monotonic(), time.time()
    loadeds = [_loaded(r) for r in args.recipes]
    if args.check_repro and (args.target or args.remote_cache):
        raise InputError("--check-repro rebuilds whole recipes locally",
                         hint="leave out --target and --remote-cache")
    if len(loadeds) > 1 and args.test:
        raise InputError("--test boots one recipe's image", hint="build the recipes together, "
                         "then `xenforge test RECIPE` for each")
    timeline = _timeline_file(args.timeline)
    graph = plan_many(loadeds)
    if args.target:
        graph = graph.only(args.target)
    keys = {}
    for loaded in loadeds:  # before anything is built: a folder of the user's stays untouched
        check_destination(Path(args.out) / loaded.name)
        sig = loaded.recipe.signing  # and a signing key that is not there fails now
        key = signing_key(sig.key if sig else None)
        try:
            keys[loaded.name] = check_key(key)
        except InputError:
            if not args.target:
                raise
            keys[loaded.name] = None  # a CI shard's --target build is no release: unsigned
    cache = cache_of(args)
    check_writable(cache)  # a cache it cannot write: exit 2 now, not a crash at a lock
    logs = cache.state.logs(graph.recipe)
    remote = remote_of(args, loadeds[0], cache, logs / "remote.log")
    progress = _progress(args, logs / "build.log")
    progress.line(f"build {graph.recipe}: {len(graph.nodes)} nodes, cache {cache.root}"
                  + (f", remote cache {remote.url}" + (" (read-only)" if not remote.writable
                                                        else "") if remote else ""))
    with progress:
        todo = resolve(graph, cache, remote, progress, targets=args.target)
        results = Executor(todo.graph, cache, progress, jobs=args.jobs, logs_dir=logs,
                           remote=todo.remote, push=todo.push, fetched=todo.fetched,
                           resolved=True).run()
    if timeline is not None:
        from xenforge.export.timeline import write_svg

        progress.line(f"timeline: {write_svg(spans_of(results, start), timeline, graph.recipe)}")
    failed = [r for r in results.values() if r.status == "failed"]
    if failed:
        for r in failed:
            assert r.error is not None
            if args.debug and r.error.__cause__ is not None:
                traceback.print_exception(r.error.__cause__, file=sys.stderr)
            print(f"error: {r.error.render()}", file=sys.stderr)
        skipped = [r.name for r in results.values() if r.status == "skipped"]
        if skipped:
            print(f"not built because of the failure: {', '.join(skipped)}", file=sys.stderr)
        if isinstance(progress, JsonProgress):
            progress.emit("summary", recipe=graph.recipe, ok=False,
                          failed=[r.name for r in failed], skipped=skipped)
        return max(r.error.exit_code for r in failed if r.error is not None)
    built = [r for r in results.values() if r.status == "built"]
    wall = time.monotonic() - start
    node_time = sum(r.seconds for r in built)
    quiet = args.quiet or args.progress == "quiet"
    if not quiet and not isinstance(progress, JsonProgress):
        overlap = f", {node_time / wall:.2f}x parallel" if built and wall > 1 else ""
        fetched = f" ({len(todo.fetched)} fetched from the remote)" if todo.fetched else ""
        cpus = [r.cpu for r in built if r.cpu is not None]
        cpu = f", {sum(cpus):.1f}s of CPU" if built and len(cpus) == len(built) else ""
        print(f"\n{graph.recipe}: {len(built)} built, {len(results) - len(built)} cached"
              f"{fetched}, {wall:.1f}s wall, {node_time:.1f}s of node time{overlap}{cpu}")
    outs, exported = [], []
    for loaded in loadeds:  # each recipe's artifacts in its own folder
        view = graph.view(loaded.name) if len(loadeds) > 1 else graph
        own_results = {own: results[name] for name in graph.nodes if name in results
                       for recipe, own in graph.origins_of(name) if recipe == loaded.name}
        out_dir = Path(args.out) / loaded.name
        release = Release(recipe_file=loaded.file, started=started, log=logs / "export.log",
                          signing_key=keys[loaded.name])
        artifacts = export(view, own_results, cache, out_dir, release)
        outs.append(out_dir)
        exported.append(artifacts)
        if isinstance(progress, JsonProgress):
            for a in artifacts:
                progress.emit("artifact", recipe=loaded.name, node=a.node,
                              path=a.path.as_posix(), size=a.size, sha256=a.sha256)
        elif not quiet:
            print(f"artifacts of {loaded.name} in {out_dir}/")
            for a in artifacts:
                print(f"  {a.path.as_posix():<48} {human_size(a.size):>10}  {a.sha256}")
    if isinstance(progress, JsonProgress):
        progress.emit("summary", recipe=graph.recipe, ok=True, built=len(built),
                      cached=len(results) - len(built), fetched=sorted(todo.fetched),
                      damaged_remote=todo.damaged, wall=round(wall, 1),
                      node_seconds=round(node_time, 1), out=[str(o) for o in outs])
    if args.check_repro:
        from xenforge.build.repro import check, write_report

        first = {ld.name: (out, arts) for ld, out, arts in zip(loadeds, outs, exported,
                                                               strict=True)}
        with progress:
            reports = check(graph, first, views=graph, progress=progress, jobs=args.jobs,
                            keep=args.keep_repro)
        for rep in reports:
            print(rep.render())
        print(f"report: {write_report(reports, logs / 'reproducibility.json')}")
        if not all(rep.ok for rep in reports):
            return 1
    tests = loadeds[0].recipe.tests
    if args.test or (len(loadeds) == 1 and tests is not None and tests.after_build
                     and not args.target):
        from xenforge.cli.machines import report
        from xenforge.verify.targets import test_built

        outcome = test_built(outs[0], cache=cache, progress=progress,
                             settings=tests or TestsSection())
        reseal(outs[0], keys[loadeds[0].name], log=logs / "export.log")  # results included
        return report(outcome)
    return 0


def _timeline_file(value: str | None) -> Path | None:
    """``--timeline``'s file, checked before anything is built."""
    from xenforge.core.errors import InputError

    if value is None:
        return None
    path = Path(value)
    if path.is_dir() or path.suffix.lower() != ".svg":
        raise InputError(f"--timeline {value}: not an .svg file name",
                         hint="give the picture's file, e.g. --timeline build.svg")
    if not path.resolve().parent.is_dir():
        raise InputError(f"--timeline {value}: the folder {path.parent} does not exist",
                         hint="create it first, or give a file in an existing folder")
    return path


def spans_of(results: dict[str, NodeResult], origin: float) -> list[Span]:
    """A build's results as timeline spans, seconds after ``origin`` (time.monotonic())."""
    from xenforge.export.timeline import Span

    spans = [Span(r.name, max(0.0, r.started - origin), max(0.0, r.ended - origin),
                  "cached" if r.status == "cached" else "failed" if r.status == "failed"
                  else "built")
             for r in results.values() if r.status != "skipped"]
    return sorted(spans, key=lambda s: (s.start, s.node))


def cmd_timeline(args: argparse.Namespace) -> int:
    from xenforge.core.errors import InputError
    from xenforge.export.timeline import read_events, spans_from_events, write_svg

    events = Path(args.events)
    if not events.is_file():
        raise InputError(f"{events}: no such file", hint="save a build's stream with "
                         "`xenforge build --progress json RECIPE > FILE`")
    spans = spans_from_events(read_events(events))
    if not spans:
        raise InputError(f"{events}: no node events (started, finished, cached) in it",
                         hint="give the output of `xenforge build --progress json`, or a "
                         "build log (the cache's state/logs/RECIPE/build.log)")
    out = _timeline_file(args.output)
    assert out is not None
    print(write_svg(spans, out, args.title or events.name))
    return 0


def cmd_verify_release(args: argparse.Namespace) -> int:
    from xenforge.export.release import verify_release

    verdict = verify_release(Path(args.folder), keyring=Path(args.keyring) if args.keyring
                             else None, require_signature=args.require_signature)
    for problem in verdict.problems:
        print(f"FAILED {problem}")
    for rel in verdict.unsealed:
        print(f"note: {rel} is not covered (test results written after the release)")
    signed = (f"signature good (key {verdict.signed_by})" if verdict.signed_by
              else "not signed")
    print(f"{args.folder}: {verdict.checked} files checked, {len(verdict.problems)} "
          f"problem(s); {signed}")
    return 0 if verdict.ok else 1
