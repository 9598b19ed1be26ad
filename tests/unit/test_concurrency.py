"""Several `xenforge build` processes of overlapping recipes on one cache at the same
moment: every one succeeds, every shared node is built exactly once (the others wait for
its lock and take it from the cache), all export the same bytes, and the cache is left
as clean as a single build leaves it.

The recipes are test graphs of the slow-test stage (tests/helpers/testgraphs.py, run by
tests/helpers/xf_build.py: the real CLI with the test stages registered), so that the
shared nodes take long enough for the builds to collide on them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import testgraphs

from xenforge import stages as stage_registry
from xenforge.cache import Cache
from xenforge.cache.store import LocalStore
from xenforge.core.hashing import sha256_file

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "helpers" / "xf_build.py"
BUILDS = 4


def _slow(counter: Path, seconds: float, kib: int, **inputs: str) -> dict[str, Any]:
    return {"stage": "slow-test", "inputs": inputs,
            "options": {"counter": str(counter), "seconds": seconds, "payload_kib": kib}}


def _spec(counter: Path) -> testgraphs.Spec:
    """Four recipes: ``base`` in all, ``left`` in r1-r3, ``right`` in r2-r4, and a node
    of its own in each (7 distinct nodes, 15 node uses)."""
    base = {"name": "base", **_slow(counter, 1.0, 256)}
    left = {"name": "left", **_slow(counter, 0.4, 128, base="base")}
    right = {"name": "right", **_slow(counter, 0.4, 96, base="base")}
    uses = {1: ["left"], 2: ["left", "right"], 3: ["left", "right"], 4: ["right"]}
    spec: testgraphs.Spec = {}
    for n, mids in uses.items():
        own = {"name": f"own-r{n}", **_slow(counter, 0.2, 8 + n, **{m: m for m in mids})}
        spec[f"r{n}"] = [base, *[m for m in (left, right) if m["name"] in mids], own]
    return spec


def _exported(folder: Path) -> dict[str, str]:
    """An export's artifacts: path -> sha256 of the file itself (not SHA256SUMS' word)."""
    docs = {"SHA256SUMS", "manifest.json", "provenance.intoto.json", "sbom.spdx.json"}
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*")
            if p.is_file() and p.name not in docs}


def test_overlapping_builds_on_one_cache_build_each_node_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in testgraphs.test_stages().items():  # for the ids, here
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    counter = tmp_path / "runs"
    spec = _spec(counter)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cache_dir = tmp_path / "cache"
    gate = tmp_path / "gate"
    env = {**os.environ, "XF_GATE": str(gate), "XENFORGE_CCACHE_DIR": str(tmp_path / "cc")}
    env.pop("XENFORGE_STATE_DIR", None)
    procs = []
    for n in range(1, BUILDS + 1):
        recipe = testgraphs.write_recipe(tmp_path / "recipes", f"r{n}")
        procs.append(subprocess.Popen(
            [sys.executable, str(DRIVER), str(spec_file), "--cache-dir", str(cache_dir),
             "build", str(recipe), "-o", str(tmp_path / f"out{n}"), "--plain"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("gate.ready.*"))) < BUILDS:
            assert all(p.poll() is None for p in procs), "a build ended before the start"
            assert time.monotonic() < deadline, "the builds never got ready"
            time.sleep(0.02)
        gate.touch()  # all at once
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out and "error" not in out, out

    # each distinct node built exactly once, by one of the processes
    runs = Counter(line.split()[1] for line in counter.read_text().splitlines())
    assert runs == {"base": 1, "left": 1, "right": 1, "own-r1": 1, "own-r2": 1, "own-r3": 1,
                    "own-r4": 1}, runs
    built = [int(m.group(1)) for out in outputs
             if (m := re.search(r"r\d: (\d+) built, \d+ cached", out))]
    assert len(built) == BUILDS and sum(built) == len(runs), outputs
    waited = sum(out.count("built by another run") for out in outputs)
    assert waited >= 1, "no build ever waited for another's node: they did not collide"

    # the same node gives the same bytes in every export
    exports = [_exported(tmp_path / f"out{n}" / f"r{n}") for n in range(1, BUILDS + 1)]
    for shared in ("base/payload.bin", "left/payload.bin", "right/payload.bin"):
        digests = {e[shared] for e in exports if shared in e}
        assert len(digests) == 1, (shared, exports)
    assert sum("base/payload.bin" in e for e in exports) == BUILDS
    for n, e in enumerate(exports, 1):
        assert f"own-r{n}/payload.bin" in e
        sums = {}
        for line in (tmp_path / f"out{n}" / f"r{n}" / "SHA256SUMS").read_text().splitlines():
            digest, path = line.split("  ", 1)
            sums[path] = digest
        assert {k: v for k, v in sums.items() if k in e} == e  # as the export says

    # the cache: 7 complete, verified objects and nothing else of the builds
    store = LocalStore(cache_dir / "objects", cache_dir / "tmp")
    objects = sorted(o.name for o in store.objects())
    ids = {testgraphs.graph_of(r, nodes).nodes[n["name"]].id
           for r, nodes in spec.items() for n in nodes}
    assert objects == sorted(ids)
    for node_id in objects:
        assert store.verify(node_id, full=True) == []
    assert list((cache_dir / "tmp").iterdir()) == []
    assert list((cache_dir / "work").iterdir()) == []
    assert not [p for p in (cache_dir / "refs").rglob("*") if p.is_file()
                and not p.name.endswith(".json")]  # no temp file of a ref
    cache = Cache(cache_dir)
    locks = sorted(p.name for p in cache.locks_dir.iterdir())
    assert locks == sorted(f"{i}.lock" for i in ids)  # one per node (kept: flock files)
    for node_id in ids:
        with cache.try_lock(node_id) as free:
            assert free, f"the lock of {node_id} is still held"
