"""Command line: argument parsing, exit codes (0 ok, 1 build failed, 2 bad input/usage,
130 interrupted) and the one top-level error handler (no traceback unless --debug)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from xenforge import __version__
from xenforge.core.errors import InputError, XenforgeError


def _cmd_validate(args: argparse.Namespace) -> int:
    from xenforge.core.errors import Problem, ValidationFailed
    from xenforge.recipe.load import load_recipe

    problems: list[Problem] = []
    for f in args.recipes:
        try:
            load_recipe(Path(f))
            print(f"{f}: ok")
        except ValidationFailed as exc:
            problems.extend(exc.problems)
    if problems:
        raise ValidationFailed(problems)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from xenforge.recipe.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return 0


def _plan(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from xenforge.plan.graph import plan
    from xenforge.recipe.load import load_recipe

    return plan(load_recipe(Path(args.recipe)))


def _cache(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from xenforge.cache.store import Cache

    return Cache(Path(args.cache_dir) if args.cache_dir else None)


def _cmd_plan(args: argparse.Namespace) -> int:
    from xenforge.plan.graph import explain_change

    graph = _plan(args)
    cache = _cache(args)
    if args.json:
        data = graph.to_json()
        for n in data["nodes"]:
            n["cached"] = cache.has(n["id"])
        print(json.dumps(data, indent=2))
        return 0
    print(f"recipe {graph.recipe}: {len(graph.nodes)} nodes")
    for node in graph.nodes.values():
        if cache.has(node.id):
            state = "cached"
        else:
            state = "build: " + explain_change(node, cache.read_ref(graph.recipe, node.name))
        deps = ", ".join(node.inputs.values())
        print(f"  {node.name:<22} {node.id[:12]}  {state}" + (f"  <- {deps}" if deps else ""))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from xenforge.build.executor import Executor
    from xenforge.cli.progress import Progress
    from xenforge.export.artifacts import export, human_size

    start = time.monotonic()
    graph = _plan(args)
    if args.target:
        graph = graph.only(args.target)
    cache = _cache(args)
    logs = cache.root / "logs" / graph.recipe
    progress = Progress(
        quiet=args.quiet, plain=True if args.plain else None, logfile=logs / "build.log"
    )
    progress.line(f"build {graph.recipe}: {len(graph.nodes)} nodes, cache {cache.root}")
    with progress:
        results = Executor(graph, cache, progress, jobs=args.jobs, logs_dir=logs).run()
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
        return max(r.error.exit_code for r in failed if r.error is not None)
    out_dir = Path(args.out) / graph.recipe
    artifacts = export(graph, results, cache, out_dir)
    built = sum(r.status == "built" for r in results.values())
    cached = sum(r.status == "cached" for r in results.values())
    if not args.quiet:
        print(
            f"\n{graph.recipe}: {built} built, {cached} cached, "
            f"{time.monotonic() - start:.1f}s; artifacts in {out_dir}/"
        )
        for a in artifacts:
            print(f"  {a.path.as_posix():<48} {human_size(a.size):>10}  {a.sha256}")
    if args.test or _tests_after_build(args):
        from xenforge.recipe.load import load_recipe
        from xenforge.recipe.model import TestsSection
        from xenforge.verify.targets import test_built

        settings = load_recipe(Path(args.recipe)).recipe.tests or TestsSection()
        outcome = test_built(out_dir, cache=cache, progress=progress, settings=settings)
        return _report(outcome)
    return 0


def _tests_after_build(args: argparse.Namespace) -> bool:
    from xenforge.recipe.load import load_recipe

    tests = load_recipe(Path(args.recipe)).recipe.tests
    return bool(tests and tests.after_build) and not args.target


def _cmd_cache(args: argparse.Namespace) -> int:
    from xenforge.export.artifacts import human_size

    cache = _cache(args)
    if args.cache_cmd == "ls":
        for e in cache.entries():
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
            print(f"{e.id[:12]}  {e.stage:<11} {e.node:<24} {human_size(e.size):>10}  {used}")
    elif args.cache_cmd == "du":
        by_stage: dict[str, int] = {}
        for e in cache.entries():
            by_stage[e.stage] = by_stage.get(e.stage, 0) + e.size
        for stage, size in sorted(by_stage.items()):
            print(f"{stage:<12} {human_size(size):>10}")
        print(f"{'total':<12} {human_size(sum(by_stage.values())):>10}  ({cache.root})")
    else:
        max_bytes = _parse_size(args.max_size) if args.max_size else None
        older = args.older_than * 86400 if args.older_than is not None else None
        removed = cache.gc(max_bytes=max_bytes, older_than=older, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for e in removed:
            what = e.node if e.stage == "scratch" else f"{e.id[:12]} {e.node}"
            print(f"{verb} {what} ({human_size(e.size)})")
        print(f"{verb} {len(removed)} entries, {human_size(sum(e.size for e in removed))}")
    return 0


def _recipe_and_out(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from xenforge.recipe.load import load_recipe
    from xenforge.recipe.model import TestsSection

    loaded = load_recipe(Path(args.recipe))
    return loaded, loaded.recipe.tests or TestsSection(), Path(args.out) / loaded.name


def _report(outcome) -> int:  # type: ignore[no-untyped-def]
    print(outcome.summary())
    return 0 if outcome.ok else 1


def _cmd_test(args: argparse.Namespace) -> int:
    from xenforge.cli.progress import Progress
    from xenforge.verify.targets import test_built, test_host

    loaded, settings, out = _recipe_and_out(args)
    if args.suite:
        settings = settings.model_copy(update={"builtin": args.suite})
    junit = Path(args.junit) if args.junit else out / "test-results" / "junit.xml"
    if args.host:
        log = _cache(args).root / "logs" / loaded.name / "verify-host.log"
        identity = Path(args.identity) if args.identity else None
        return _report(
            test_host(
                args.host,
                out=out,
                settings=settings,
                junit=junit,
                log=log,
                identity=identity,
                known_hosts=Path(args.known_hosts) if args.known_hosts else None,
            )
        )
    progress = Progress(quiet=args.quiet, plain=True)
    return _report(
        test_built(
            out,
            cache=_cache(args),
            progress=progress,
            settings=settings,
            firmware=args.firmware,
            junit=junit,
        )
    )


def _is_artifact(arg: str) -> bool:
    """``xenforge boot|ssh`` got a disk image or ISO file rather than a recipe."""
    from xenforge.verify.targets import BOOTABLE

    return Path(arg).suffix in BOOTABLE


def _boot_what(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(name, target, settings) for ``xenforge boot``: a recipe's dom0 image, or a file."""
    from xenforge.recipe.model import TestsSection
    from xenforge.verify.targets import artifact_target, boot_target

    path = Path(args.recipe)
    if _is_artifact(args.recipe):
        settings = TestsSection()
        target = artifact_target(path, firmware=args.firmware, settings=settings)
        return path.stem, target, settings
    loaded, settings, out = _recipe_and_out(args)
    return loaded.name, boot_target(out, firmware=args.firmware, settings=settings), settings


def _cmd_boot(args: argparse.Namespace) -> int:
    from xenforge.cli.progress import last_line
    from xenforge.vm.session import Session, kvm_works

    name, target, settings = _boot_what(args)
    recipe = "RECIPE" if _is_artifact(args.recipe) else args.recipe
    cache = _cache(args)
    run_dir = cache.root / "run" / name
    logs = cache.root / "logs" / name
    kvm = kvm_works(cache.root, target.kernel, logs / "kvm-probe.log")
    print(
        f"booting {target.disk or target.iso} ({target.firmware}, {'KVM' if kvm else 'TCG'}); "
        f"console log: {run_dir / 'serial.log'}",
        flush=True,
    )
    with Session(target, workdir=run_dir, log=logs / "qemu.log", kvm=kvm,
                 lifetime=None) as vm:  # runs until Ctrl-C, however long
        took = vm.wait_ready(args.timeout or settings.boot.timeout)
        state = vm.state()
        (run_dir / "state.json").write_text(json.dumps(state, indent=2))
        print(
            f"ready after {took:.0f}s: {vm.ssh_url}\n"
            f"  shell:  xenforge ssh {args.recipe}\n"
            f"  tests:  xenforge test {recipe} --host {vm.ssh_url}"
            + (f" --identity {target.key}" if target.key else "")
            + f" --known-hosts {state['known_hosts']}"
            + "\n  stop:   Ctrl-C (or SIGTERM)",
            flush=True,
        )
        try:
            while vm.vm.running():
                time.sleep(1)
        finally:
            (run_dir / "state.json").unlink(missing_ok=True)
    # QEMU ended by itself: the machine powered off (or rebooted: -no-reboot), or crashed
    rc = vm.vm.result.returncode if vm.vm.result else None
    last = last_line(str(vm.vm.serial)) or "(nothing)"
    print(f"the VM stopped by itself (QEMU exit {rc}); the console said last: {last}\n"
          f"  console log: {vm.vm.serial}", file=sys.stderr)
    return 0 if rc == 0 else 1


def _cmd_ssh(args: argparse.Namespace) -> int:
    from xenforge.recipe.load import load_recipe

    path = Path(args.recipe)
    name = path.stem if _is_artifact(args.recipe) else load_recipe(path).name
    state_file = _cache(args).root / "run" / name / "state.json"
    if not state_file.is_file():
        raise InputError(
            f"no running VM for {name}", hint=f"start one: xenforge boot {args.recipe}"
        )
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        raise InputError(f"{state_file} is damaged",
                         hint=f"stop the VM and start it again: xenforge boot {args.recipe}"
                         ) from None
    argv = [
        "ssh",
        "-p",
        str(state["port"]),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    if state.get("key"):
        argv += ["-i", state["key"]]
    argv += [f"{state['user']}@127.0.0.1", *args.command]
    os.execvp("ssh", argv)
    return 0  # not reached


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        number = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise InputError(f"--max-size: {text!r} is not a size", hint="e.g. 20G or 500M")
    return int(number)


def _at_least(minimum: float, convert: Callable[[str], float], what: str
              ) -> Callable[[str], float]:
    """An argparse type: ``convert``ed, finite and >= ``minimum`` (a usage error otherwise)."""
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_positive_int = _at_least(1, int, "a whole number of at least 1")
_days = _at_least(0, float, "a number of days (0 or more)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xenforge", description="Build, boot and verify Xen systems from pinned sources."
    )
    p.add_argument("--version", action="version", version=f"xenforge {__version__}")
    # global options work before or after the command (`xenforge build --debug R`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="cache directory (default: $XENFORGE_CACHE_DIR or ~/.cache/xenforge)",
    )
    p.add_argument("--debug", action="store_true")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="cache directory (default: $XENFORGE_CACHE_DIR or ~/.cache/xenforge)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser(
        "validate", parents=[common], help="check recipes; report every problem at once"
    )
    v.add_argument("recipes", nargs="+", metavar="RECIPE")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser(
        "schema", parents=[common], help="print the recipe JSON Schema (for editors)"
    )
    s.set_defaults(func=_cmd_schema)

    pl = sub.add_parser("plan", parents=[common], help="show the build graph and what is cached")
    pl.add_argument("recipe", metavar="RECIPE")
    pl.add_argument("--json", action="store_true", help="machine-readable graph")
    pl.set_defaults(func=_cmd_plan)

    b = sub.add_parser(
        "build", parents=[common], help="build a recipe's artifacts through the cache"
    )
    b.add_argument("recipe", metavar="RECIPE")
    b.add_argument("-j", "--jobs", type=_positive_int, default=None,
                   help="parallel jobs (default: cores)")
    b.add_argument("-o", "--out", default="out", help="artifact directory (default: ./out)")
    b.add_argument(
        "-t",
        "--target",
        action="append",
        metavar="NODE",
        help="build only NODE and the nodes it needs (repeatable; names as "
        "`xenforge plan` shows them); out/RECIPE/ then holds their artifacts",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="only errors")
    b.add_argument("--plain", action="store_true", help="plain log lines, no live view")
    b.add_argument(
        "--test",
        action="store_true",
        help="then boot the result and run the test suites (xenforge test)",
    )
    b.set_defaults(func=_cmd_build)

    t = sub.add_parser(
        "test",
        parents=[common],
        help="boot the recipe's dom0 image (or use --host) and run the suites",
    )
    t.add_argument("recipe", metavar="RECIPE")
    t.add_argument(
        "--host",
        metavar="URL",
        help="test this machine instead of booting one (ssh://root@HOST[:PORT], paramiko://...)",
    )
    t.add_argument("--identity", metavar="KEY", help="SSH private key for --host")
    t.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="host keys for --host (default: yours); a host not in FILE yet is trusted on "
        "first use and added",
    )
    t.add_argument("--firmware", choices=["bios", "uefi"], help="boot firmware")
    t.add_argument(
        "--suite",
        action="append",
        choices=["dom0", "guests"],
        help="run only this built-in suite (repeatable; default: the recipe's tests.builtin)",
    )
    t.add_argument(
        "--junit", metavar="FILE", help="JUnit XML (default: out/RECIPE/test-results/junit.xml)"
    )
    t.add_argument("-o", "--out", default="out", help="where the build put its artifacts")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=_cmd_test)

    bo = sub.add_parser(
        "boot",
        parents=[common],
        help="boot the recipe's dom0 image (or a disk image or ISO file) in QEMU until Ctrl-C",
    )
    bo.add_argument("recipe", metavar="RECIPE|FILE")
    bo.add_argument("--firmware", choices=["bios", "uefi"])
    bo.add_argument("--timeout", type=int, help="seconds to wait for readiness")
    bo.add_argument("-o", "--out", default="out", help="where the build put its artifacts")
    bo.set_defaults(func=_cmd_boot)

    sh = sub.add_parser("ssh", parents=[common], help="a shell on the VM `xenforge boot` runs")
    sh.add_argument("recipe", metavar="RECIPE")
    sh.add_argument("command", nargs=argparse.REMAINDER, help="a command to run instead")
    sh.set_defaults(func=_cmd_ssh)

    c = sub.add_parser("cache", parents=[common], help="inspect or clean the cache")
    csub = c.add_subparsers(dest="cache_cmd", required=True, metavar="ACTION")
    csub.add_parser("ls", parents=[common], help="list cached nodes, least recently used first")
    csub.add_parser("du", parents=[common], help="disk use by stage")
    gc = csub.add_parser("gc", parents=[common], help="remove stale and old entries")
    gc.add_argument(
        "--max-size",
        help="shrink to this size, least recently used first "
        "(the latest build of each recipe's nodes is kept)",
    )
    gc.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="remove entries not used for DAYS and not the latest of any recipe",
    )
    gc.add_argument("--dry-run", action="store_true")
    c.set_defaults(func=_cmd_cache)
    return p


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _on_term)
    try:
        code: int = args.func(args)
        return code
    except XenforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `xenforge plan R | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        from xenforge.core import run

        run.kill_all()
        done = {"build": "nothing half-built was kept", "boot": "the VM was stopped",
                "test": "the VM was stopped"}.get(args.command, "stopped")
        print(f"interrupted; {done}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line; the traceback with --debug
        if args.debug:
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              "  hint: this is a xenforge bug; run again with --debug for the traceback",
              file=sys.stderr)
        return 1

