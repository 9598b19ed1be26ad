"""``xenforge cache ls | du | gc``."""

from __future__ import annotations

import argparse
import time

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
    else:
        max_bytes = parse_size(args.max_size) if args.max_size is not None else None
        older = args.older_than * 86400 if args.older_than is not None else None
        removed = cache.gc(max_bytes=max_bytes, older_than=older, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for e in removed:
            what = e.node if e.stage == "scratch" else f"{e.id[:12]} {e.node}"
            print(f"{verb} {what} ({human_size(e.size)})")
        print(f"{verb} {len(removed)} entries, {human_size(sum(e.size for e in removed))}")
    return 0
