"""Kernel build times: cold, warm ccache, and after a fragment change (with and without the
incremental build dir). Prints a table; asserts nothing.

    .venv/bin/python bench/kernel_rebuild.py [--cache DIR] [--keep]

Uses its own cache dir (default: a new temp dir, so the first build is really cold; pass
--cache to reuse one). Runs the stages directly (source -> tree -> kernel) under the
machine-wide heavy-build lock. Takes ~20-30 min on 2 cores.
"""

from __future__ import annotations

import argparse
import fcntl
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xenforge.cache.store import Cache  # noqa: E402
from xenforge.core.hashing import sha256_json, tree_hash  # noqa: E402
from xenforge.stages import get_stage  # noqa: E402
from xenforge.stages.base import StageContext  # noqa: E402

LINE = REPO / "kernel_patches" / "linux-6.1"
LOCK = Path("/tmp/xenforge-heavy.lock")


def run_node(cache: Cache, stage: str, options: dict[str, Any], inputs: dict[str, Path],
             files: dict[str, Path], node: str, salt: str = "") -> tuple[Path, float]:
    """Run one stage into a fresh output dir (no node cache: every call builds)."""
    cls = get_stage(stage)
    opts = cls.Options.model_validate(options)
    node_id = sha256_json({"stage": stage, "options": opts.model_dump(mode="json"),
                           "inputs": {k: str(v) for k, v in inputs.items()},
                           "files": {k: tree_hash(p) for k, p in files.items()}, "salt": salt})
    out = cache.root / "bench-out" / f"{stage}-{node_id[:12]}"
    work = cache.root / "bench-work" / node_id[:12]
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    ctx = StageContext(node=node, node_id=node_id, options=opts, inputs=inputs, files=files,
                       out=out, work=work, log=out.with_suffix(".log"), cache=cache)
    start = time.monotonic()
    cls().run(ctx)
    seconds = time.monotonic() - start
    shutil.rmtree(work, ignore_errors=True)
    return out, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="cache dir (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp cache dir")
    args = ap.parse_args()
    root = args.cache or Path(tempfile.mkdtemp(prefix="xenforge-bench-"))
    cache = Cache(root)
    line = yaml.safe_load((LINE / "line.yaml").read_text())
    source, _ = run_node(cache, "source", {"spec": line["source"]}, {}, {}, "source")
    tree, t_tree = run_node(cache, "tree", {}, {"source": source}, {"patches": LINE}, "tree")
    changed = root / "changed"
    changed.mkdir(exist_ok=True)
    for name in ("base", "dom0", "domu"):
        shutil.copy(LINE / f"{name}.config", changed / f"{name}.config")
    with open(changed / "dom0.config", "a") as f:
        f.write("CONFIG_VETH=m\n")

    def frags(folder: Path) -> dict[str, Path]:
        return {f"fragment{i}": folder / f"{n}.config" for i, n in enumerate(("base", "dom0"))}

    rows: list[tuple[str, float]] = [("unpack + patch the tree (once per line)", t_tree)]
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        steps = [
            ("cold (empty ccache), dom0 kernel", frags(LINE), False, "a"),
            ("warm ccache, same config, fresh build dir", frags(LINE), False, "b"),
            ("fragment change (+VETH), fresh dir + ccache", frags(changed), False, "c"),
            ("incremental dir: first build (ccache warm)", frags(LINE), True, "d"),
            ("incremental dir: after a fragment change", frags(changed), True, "e"),
            ("incremental dir: same config, new build id", frags(changed), True, "f"),
        ]
        for label, files, incremental, salt in steps:
            _, seconds = run_node(cache, "kernel", {"incremental": incremental},
                                  {"tree": tree}, files, "kernel:bench", salt)
            rows.append((label, seconds))
            print(f"{label:55s} {seconds:7.0f} s", flush=True)
    print("\nkernel stage wall times (including bindeb-pkg):")
    for label, seconds in rows:
        print(f"  {label:55s} {seconds:7.0f} s")
    if not args.cache and not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
