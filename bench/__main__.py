"""xenforge's benchmark harness: measures, on this machine and in one run, what xenforge costs
and where a build's time goes, and writes ``report.md`` and ``report.json`` (plus pictures)
to ``--out``. Benchmarks, not tests: nothing here fails on a slow figure; each target the
project sets is reported as met or missed, with its ratio.

    bench/run [--quick] [--only NAME]... [--recipe R] [--cache DIR] [--out DIR] [--runs N]

The recipe's nodes should be built in ``--cache`` (default: the test suite's cache,
``$XENFORGE_TEST_CACHE`` or /var/tmp/xenforge-test-cache): the benchmarks measure rebuilds,
plans and sizes against it, and build what is missing first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import REPO, Outcome, Settings, clock, machine

#: the benchmarks, in the order of the report (modules of bench/cases)
CASES = ["noop", "timeline", "overhead", "incremental", "scaling", "sizes", "boot", "peers"]


def _report(settings: Settings, outcomes: list[Outcome], errors: dict[str, str],
            info: dict[str, object]) -> str:
    recipe = settings.recipe.relative_to(REPO) if settings.recipe.is_relative_to(REPO) \
        else settings.recipe
    lines = ["# xenforge benchmarks", "",
             f"Recipe `{settings.recipe.name}`, cache `{settings.cache}`; "
             f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, load at "
             f"start {info['load_at_start']}; {info['date']}; "
             f"medians over {settings.runs} runs where runs are short.", "",
             f"Command: `{settings.command}` (recipe `{recipe}`)", ""]
    targets = [(o.title, t) for o in outcomes for t in o.targets]
    if targets:
        lines += ["## Targets", ""] + [f"- {title}: {t.render()}" for title, t in targets] + [""]
    for o in outcomes:
        lines += [f"## {o.title}", "", f"(`{o.name}`, {clock(o.seconds)})", ""]
        for table in o.tables:
            lines += [table.markdown(), ""]
        for pic in o.pictures:
            lines += [f"![{pic.stem}]({pic.name})", ""]
        lines += [f"{n}" for n in o.notes] + ([""] if o.notes else [])
    for name, err in errors.items():
        lines += [f"## {name}: FAILED", "", "```", err.strip()[-3000:], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="only the benchmarks that take minutes, not hours")
    ap.add_argument("--only", action="append", choices=CASES, metavar="NAME",
                    help=f"run this benchmark only (repeatable): {', '.join(CASES)}")
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "xen-host.yaml")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "XENFORGE_TEST_CACHE", "/var/tmp/xenforge-test-cache")))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--runs", type=int, default=5, help="repetitions of short measurements")
    args = ap.parse_args(argv)
    if not args.recipe.is_file():
        print(f"bench/run: no recipe {args.recipe}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xenforge-bench-", dir="/var/tmp"))
    settings = Settings(recipe=args.recipe.resolve(), cache=args.cache.resolve(), work=work,
                        out=args.out.resolve(), runs=max(1, args.runs), quick=args.quick,
                        command=" ".join(["bench/run", *(argv if argv is not None
                                                         else sys.argv[1:])]))
    info = machine()
    outcomes: list[Outcome] = []
    errors: dict[str, str] = {}
    try:
        for name in args.only or CASES:
            case = importlib.import_module(f"bench.cases.{name}")
            if settings.quick and not case.QUICK:
                continue
            print(f"bench: {name}: {case.TITLE} ...", flush=True)
            start = time.monotonic()
            try:
                outcome = case.run(settings)
            except Exception:  # one benchmark failing is reported; the others still run
                errors[name] = traceback.format_exc()
                print(f"bench: {name} FAILED\n{errors[name]}", file=sys.stderr, flush=True)
                continue
            outcome.seconds = time.monotonic() - start
            outcomes.append(outcome)
            for t in outcome.targets:
                print(f"bench: {name}: {t.render()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = settings.out / "report.md"
    report.write_text(_report(settings, outcomes, errors, info), encoding="utf-8")
    data = {"machine": info, "recipe": str(settings.recipe.name), "quick": settings.quick,
            "runs": settings.runs, "errors": errors,
            "benchmarks": {o.name: {"title": o.title, "seconds": round(o.seconds, 1),
                                    "figures": o.figures, "notes": o.notes,
                                    "pictures": [p.name for p in o.pictures],
                                    "targets": [{"what": t.what, "value": t.value,
                                                 "limit": t.limit, "unit": t.unit,
                                                 "met": t.met} for t in o.targets]}
                           for o in outcomes}}
    (settings.out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"bench: report {report} and {settings.out / 'report.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
