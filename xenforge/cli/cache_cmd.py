"""``xenforge cache ls | du | gc | verify``."""

from __future__ import annotations

import argparse
import time

from xenforge.cache import Cache
from xenforge.cache.writable import check_writable
from xenforge.cli.common import cache_of, parse_size
from xenforge.core.units import human_size


def cmd_cache(args: argparse.Namespace) -> int:
    cache = cache_of(args)
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
    elif args.cache_cmd == "verify":
        check_writable(cache)
        return verify(cache)
    else:
        if not args.dry_run:
            check_writable(cache)
        max_bytes = parse_size(args.max_size) if args.max_size is not None else None
        older = args.older_than * 86400 if args.older_than is not None else None
        removed = cache.gc(max_bytes=max_bytes, older_than=older, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for e in removed:
            what = e.node if e.stage == "scratch" else f"{e.id[:12]} {e.node}"
            print(f"{verb} {what} ({human_size(e.size)})")
        print(f"{verb} {len(removed)} entries, {human_size(sum(e.size for e in removed))}")
    return 0


def verify(cache: Cache) -> int:
    """Hash every file of every object against its manifest (a build checks sizes and
    mtimes only, and hashes a file only when they differ); a damaged object is taken out of
    the store, so the next build that needs it rebuilds it. 1 if one was damaged. An object
    a running build holds is skipped."""
    checked, damaged, busy = 0, 0, 0
    for e in cache.entries():
        with cache.try_lock(e.id) as free:
            if not free:
                busy += 1
                continue
            if not cache.has(e.id):  # gc or a build took it meanwhile
                continue
            checked += 1
            problems = cache.store.verify(e.id, full=True)
            if problems:
                damaged += 1
                cache.discard(e.id)
                print(f"damaged {e.id[:12]} {e.node}: {problems[0]}; removed (the next build "
                      "that needs it rebuilds it)")
    skipped = f", {busy} in use by a build (not checked)" if busy else ""
    print(f"{checked} object{'' if checked == 1 else 's'} verified, {damaged} damaged"
          f"{skipped}")
    return 1 if damaged else 0
