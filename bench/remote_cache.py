"""The remote cache over loopback: a node's upload (pack + PUT + MOVE), the lookup of a
missing node (a miss), and the download into an empty local cache (GET + verify + unpack)
- by default of the recipe's largest node. A real nginx (tests/helpers/nginx.py) serves a
temporary directory. Prints a table and JSON; asserts nothing.

    .venv/bin/python bench/remote_cache.py [--cache DIR] [--recipe R] [--node NODE]

The node must be built in --cache (default: the test cache, $XENFORGE_TEST_CACHE or
/var/tmp/xenforge-test-cache). Needs about twice the node's size in free space below
/var/tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import nginx  # type: ignore[import-not-found]  # noqa: E402

from xenforge.cache import Cache  # noqa: E402
from xenforge.cache.remote import RemoteCache, RemoteSettings  # noqa: E402
from xenforge.cache.store import dir_size  # noqa: E402
from xenforge.core.units import human_size  # noqa: E402
from xenforge.plan import plan  # noqa: E402
from xenforge.recipe.load import load_recipe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(
        os.environ.get("XENFORGE_TEST_CACHE", "/var/tmp/xenforge-test-cache")))
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "xen-host.yaml"))
    ap.add_argument("--node", help="default: the largest node built in --cache")
    ap.add_argument("--misses", type=int, default=20, help="lookups of missing nodes")
    args = ap.parse_args()

    cache = Cache(args.cache)
    graph = plan(load_recipe(Path(args.recipe)))
    built = {n.name: n for n in graph.nodes.values() if cache.has(n.id)}
    if not built:
        print(f"nothing of {graph.recipe} is built in {args.cache}", file=sys.stderr)
        return 2
    name = args.node or max(built, key=lambda n: dir_size(cache.out(built[n].id)))
    node = built[name]
    with tempfile.TemporaryDirectory(prefix="xf-bench-remote-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        srv = nginx.start(base / "nginx")
        try:
            remote = RemoteCache(RemoteSettings(srv.url), tmp_dir=cache.tmp_dir)
            t0 = time.monotonic()
            misses = []
            for i in range(args.misses):
                t = time.monotonic()
                assert not remote.has(f"{i:064x}")
                misses.append(time.monotonic() - t)
            miss = statistics.median(misses)
            up = remote.push(node.id, cache.store)
            empty = Cache(base / "empty")
            reader = RemoteCache(RemoteSettings(srv.url, read_only=True),
                                 tmp_dir=empty.tmp_dir)
            t = time.monotonic()
            assert reader.has(node.id)
            hit_lookup = time.monotonic() - t
            down = reader.fetch(node.id, empty.store)
            assert not empty.store.verify(node.id, full=True)
            size = dir_size(cache.out(node.id))
        finally:
            srv.stop()
        shutil.rmtree(base / "empty", ignore_errors=True)
    report = {
        "node": name, "id": node.id, "object_bytes": size, "archive_bytes": up.bytes,
        "miss_lookup_ms": round(miss * 1000, 1), "hit_lookup_ms": round(hit_lookup * 1000, 1),
        "upload_total_s": round(up.total, 1), "upload_http_s": round(up.seconds, 1),
        "upload_MiBps": round(up.rate, 1),
        "download_total_s": round(down.total, 1), "download_http_s": round(down.seconds, 1),
        "download_MiBps": round(down.rate, 1),
        "cores": os.cpu_count(), "wall_s": round(time.monotonic() - t0, 1),
    }
    print(f"node {name} ({node.id[:12]}): {human_size(size)} of files, "
          f"{human_size(up.bytes)} as zstd tar")
    print(f"  miss (HEAD of an absent node, median of {args.misses}): "
          f"{report['miss_lookup_ms']} ms")
    print(f"  hit lookup (HEAD):                    {report['hit_lookup_ms']} ms")
    print(f"  upload:   {up.total:6.1f} s  (HTTP {up.seconds:.1f} s, {up.rate:.0f} MiB/s; "
          "the rest packs and hashes)")
    print(f"  download: {down.total:6.1f} s  (HTTP {down.seconds:.1f} s, {down.rate:.0f} MiB/s; "
          "the rest unpacks and verifies every file)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
