"""Build the Xen nodes for the integration tests.

The default recipe's nodes (``recipe_node``) go through the planner and the executor, exactly
as ``xenforge build recipes/xen-host.yaml`` builds them, so they share their cache entries
with the end-to-end test (one kernel and one Xen build per cold run). Variants that no recipe
has (an extra Kconfig fragment, a broken patch series) run one stage directly
(``run_stage``). Everything is cached in ``$XENFORGE_TEST_CACHE`` (default
``/var/tmp/xenforge-test-cache``) so that a second run is quick.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xenforge.build.executor import Executor
from xenforge.cache import Cache
from xenforge.cli.progress import Progress
from xenforge.core.hashing import sha256_json, tree_hash
from xenforge.core.sandbox import Sandbox
from xenforge.plan import build_env, plan
from xenforge.plan.graph import BuildEnv
from xenforge.recipe.load import load_recipe
from xenforge.stages import get_stage
from xenforge.stages.base import StageContext

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "xen-host.yaml"
HEAVY_LOCK = Path("/tmp/xenforge-heavy.lock")


def test_cache() -> Cache:
    return Cache(Path(os.environ.get("XENFORGE_TEST_CACHE", "/var/tmp/xenforge-test-cache")))


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def spec_file(recipe: Path = RECIPE) -> Path:
    """The hypervisor spec the recipe builds (hypervisor/xen-4.20.yaml for the default)."""
    loaded = load_recipe(recipe)
    assert loaded.recipe.hypervisor is not None
    return loaded.recipe.hypervisor.spec


SPEC = spec_file()


def load_spec() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return data


#: the default recipe's Xen: its series ("4.20"), its target release ("trixie")
SERIES = ".".join(str(load_spec()["version"]).split(".")[:2])
RELEASE = load_recipe(RECIPE).recipe.target.release


@dataclass
class Built:
    id: str
    out: Path
    log: Path
    seconds: float
    cached: bool


@contextmanager
def heavy_lock() -> Iterator[None]:
    """The machine-wide lock for compiler-heavy work (one heavy build at a time)."""
    with open(HEAVY_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recipe_env() -> BuildEnv:
    """The default recipe's build environment (epoch, target): variants built here share it."""
    return build_env(load_recipe(RECIPE))


def run_stage(cache: Cache, stage: str, options: Mapping[str, Any], *,
              inputs: Mapping[str, Built] | None = None,
              files: Mapping[str, Path | list[Path]] | None = None, node: str | None = None,
              jobs: int = 2) -> Built:
    """Build one node (or reuse it from the cache); raises what the stage raises."""
    inputs = dict(inputs or {})
    files = dict(files or {})
    cls = get_stage(stage)
    opts = cls.Options.model_validate(dict(options))
    env = recipe_env()
    key = {"stage": stage, "version": cls.version, "options": opts.model_dump(mode="json"),
           "inputs": {k: b.id for k, b in inputs.items()},
           "files": {k: tree_hash(p) if isinstance(p, Path) else [tree_hash(q) for q in p]
                     for k, p in files.items()},
           "env": env.to_json()}
    node_id = sha256_json(key)
    logs = cache.root / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage}-{node_id[:12]}.log"
    if cache.has(node_id):
        return Built(node_id, cache.out(node_id), log, 0.0, True)
    with cache.lock(node_id):
        if cache.has(node_id):
            return Built(node_id, cache.out(node_id), log, 0.0, True)
        log.write_text(f"[test] node {stage} id {node_id}\n")
        work = cache.work(node_id)
        with cache.staging(node_id) as staging:
            sandbox = None
            if cls.buildroot and "buildroot" in inputs:
                sandbox = Sandbox(root=inputs["buildroot"].out / "root", release=env.target,
                                  writable=[work, staging, cache.ccache_dir, cache.scratch_dir],
                                  readable=[b.out for k, b in inputs.items() if k != "buildroot"])
            ctx = StageContext(node=node or stage, node_id=node_id, options=opts,
                               sandbox=sandbox,
                               inputs={k: b.out for k, b in inputs.items()},
                               files={k: p if isinstance(p, Path) else tuple(p)
                                      for k, p in files.items()},
                               out=staging / "out", work=work, log=log, epoch=env.epoch,
                               compiler_cache=cache.ccache_dir, jobs=jobs,
                               scratch=cache.scratch)
            with heavy_lock() if cls.heavy else nullcontext():
                start = time.monotonic()  # the time waiting for the lock does not count
                cls().run(ctx)
                seconds = time.monotonic() - start
            cache.commit(node_id, staging, {"node": ctx.node, "id": node_id, "stage": stage,
                                            "key": key, "seconds": round(seconds, 1)})
        shutil.rmtree(work, ignore_errors=True)
    return Built(node_id, cache.out(node_id), log, seconds, False)


def recipe_build(cache: Cache, targets: list[str], recipe: Path = RECIPE) -> dict[str, Built]:
    """Nodes ``targets`` of ``recipe`` and what they need, built (or reused) like ``xenforge
    build --target NODE`` does; every node of that subgraph by name. A failing node fails the
    calling test with the node's error."""
    graph = plan(load_recipe(recipe)).only(targets)
    logs = cache.state.logs(graph.recipe)
    with Progress(plain=True) as progress:
        results = Executor(graph, cache, progress, jobs=2, logs_dir=logs).run()
    failed = {n: r.error.render() for n, r in results.items() if r.error is not None}
    assert not failed, failed
    built = {}
    for name, res in results.items():
        assert res.out is not None, f"{name}: {res.status}"
        log = logs / f"{name.replace(':', '-')}.log"
        built[name] = Built(res.id, res.out, log, res.seconds, res.status == "cached")
    return built


def recipe_node(cache: Cache, name: str, recipe: Path = RECIPE) -> Built:
    """One node of ``recipe`` (see ``recipe_build``)."""
    return recipe_build(cache, [name], recipe)[name]


def xen_source(cache: Cache) -> Built:
    return recipe_node(cache, f"source:{load_spec()['name']}")


def buildroot(cache: Cache) -> Built:
    """The default recipe's buildroot (its target release's)."""
    return recipe_node(cache, f"buildroot:debian-{RELEASE}")


def xen_tree(cache: Cache, patches: Path | None = None) -> Built:
    if patches is None:
        return recipe_node(cache, f"tree:{load_spec()['name']}")
    return run_stage(cache, "tree", {}, inputs={"source": xen_source(cache)},
                     files={"patches": patches})


def fragments(spec: Mapping[str, Any], extra: list[Path] | None = None
              ) -> dict[str, Path | list[Path]]:
    return {"config": [SPEC.parent / p for p in spec["config"]] + list(extra or [])}


def hypervisor(cache: Cache, tree: Built, *, extra_fragments: list[Path] | None = None,
               **options: Any) -> Built:
    if not extra_fragments and not options:
        return recipe_node(cache, "hypervisor")
    spec = load_spec()
    return run_stage(cache, "hypervisor", {"version": spec["version"], **options},
                     inputs={"tree": tree, "buildroot": buildroot(cache)},
                     files=fragments(spec, extra_fragments))


def toolstack(cache: Cache, tree: Built) -> Built:
    return recipe_node(cache, "toolstack")


def xen_debs(cache: Cache, hyp: Built, tools: Built) -> Built:
    return recipe_node(cache, "xen-debs")
