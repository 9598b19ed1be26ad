"""Run a graph: cached nodes are skipped, the others run in dependency order (independent ones
in parallel, heavy compiler stages one at a time), each into a staging dir that is committed
to the cache only on success."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from xenforge.core import run as runner
from xenforge.cache.store import Cache
from xenforge.core.errors import CommandFailed, StageFailed, XenforgeError
from xenforge.core.leftovers import remove_tree
from xenforge.plan.graph import Graph, Node, explain_change
from xenforge.cli.progress import Progress
from xenforge.stages import get_stage
from xenforge.stages.base import StageContext


@dataclass
class NodeResult:
    name: str
    id: str
    status: str  # "cached", "built", "failed", "skipped"
    seconds: float = 0.0
    out: Path | None = None
    error: XenforgeError | None = None


class Executor:
    def __init__(self, graph: Graph, cache: Cache, progress: Progress, *,
                 jobs: int | None = None, logs_dir: Path | None = None) -> None:
        self.graph = graph
        self.cache = cache
        self.progress = progress
        self.jobs = jobs or os.cpu_count() or 2
        self.logs_dir = logs_dir or cache.root / "logs" / graph.recipe
        self.results: dict[str, NodeResult] = {}

    def log_path(self, node: Node) -> Path:
        return self.logs_dir / f"{node.name.replace(':', '-').replace('/', '_')}.log"

    def run(self) -> dict[str, NodeResult]:
        orphans = runner.stop_orphans(self.cache.orphaned)
        if orphans:
            self.progress.line(f"stopped {len(orphans)} process(es) a killed build left running")
        pending = dict(self.graph.nodes)
        failed = False
        # heavy (compiler) nodes run one at a time, each with -j jobs; light nodes (fetches,
        # packaging) run beside them, so the pool has room for both
        heavy_running: set[cf.Future[NodeResult]] = set()
        with cf.ThreadPoolExecutor(max_workers=self.jobs + 2) as pool:
            running: dict[cf.Future[NodeResult], str] = {}
            try:
                while pending or running:
                    if not failed:
                        self._submit_ready(pool, pending, running, heavy_running)
                    if not running:
                        break
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        heavy_running.discard(fut)
                        name = running.pop(fut)
                        result = fut.result()
                        self.results[name] = result
                        if result.status == "failed":
                            failed = True
            except BaseException:  # SIGINT/SIGTERM: stop commands, let stages clean up
                runner.kill_all()
                cf.wait(running)
                raise
        for name, node in pending.items():
            self.results[name] = NodeResult(name, node.id, "skipped")
        return self.results

    def _submit_ready(self, pool: cf.ThreadPoolExecutor, pending: dict[str, Node],
                      running: dict[cf.Future[NodeResult], str],
                      heavy_running: set[cf.Future[NodeResult]]) -> None:
        """Start every pending node whose inputs are done (at most one heavy build)."""
        for name, node in list(pending.items()):
            if not all(d in self.results and self.results[d].status in ("cached", "built")
                       for d in node.inputs.values()):
                continue
            heavy = get_stage(node.stage).heavy and not self.cache.has(node.id)
            if heavy and heavy_running:
                continue
            del pending[name]
            fut = pool.submit(self._run_node, node)
            running[fut] = name
            if heavy:
                heavy_running.add(fut)

    def _run_node(self, node: Node) -> NodeResult:
        if self.cache.has(node.id):
            self.cache.touch(node.id)
            self.cache.write_ref(self.graph.recipe, node.name, {"id": node.id, "key": node.key()})
            self.progress.line(f"cached {node.name}  {node.id[:12]}")
            return NodeResult(node.name, node.id, "cached", out=self.cache.out(node.id))
        stage_cls = get_stage(node.stage)
        with self.cache.lock(node.id):
            if self.cache.has(node.id):  # another build made it while we waited
                self.progress.line(f"cached {node.name}  {node.id[:12]} (built by another run)")
                return NodeResult(node.name, node.id, "cached", out=self.cache.out(node.id))
            return self._build(node, stage_cls)

    def _build(self, node: Node, stage_cls: type) -> NodeResult:
        log = self.log_path(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        previous = self.cache.read_ref(self.graph.recipe, node.name)
        log.write_text(f"[xenforge] node {node.name} id {node.id}\n"
                       f"[xenforge] why: {explain_change(node, previous)}\n")
        self.progress.started(node.name, str(log))
        start = time.monotonic()
        stage = stage_cls()
        try:
            work = self.cache.work(node.id)
            with self.cache.staging(node.id) as staging:
                ctx = StageContext(
                    node=node.name, node_id=node.id,
                    options=stage.Options.model_validate(node.options),
                    inputs={label: self.cache.out(self.graph.nodes[dep].id)
                            for label, dep in node.inputs.items()},
                    files=dict(node.files), out=staging / "out", work=work, log=log,
                    cache=self.cache, jobs=self.jobs)
                with runner.owned_by(str(self.cache.lock_file(node.id))):
                    stage.run(ctx)
                seconds = time.monotonic() - start
                shutil.copyfile(log, staging / "log")
                manifest = {"node": node.name, "id": node.id, "stage": node.stage,
                            "recipe": self.graph.recipe, "key": node.key(),
                            "seconds": round(seconds, 1), "finished": time.time()}
                self.cache.commit(node.id, staging, manifest)
        except XenforgeError as exc:
            self.progress.finished(node.name, "FAILED", f"log: {log}")
            err = exc if isinstance(exc, StageFailed) else _as_stage_failure(node, exc, log)
            return NodeResult(node.name, node.id, "failed", time.monotonic() - start, error=err)
        except Exception as exc:  # a bug in a stage: still name the node and the log
            with open(log, "a", encoding="utf-8") as f:
                f.write("[xenforge] internal error:\n" + "".join(traceback.format_exception(exc)))
            self.progress.finished(node.name, "FAILED", f"log: {log}")
            err = StageFailed(node.name, f"internal error: {type(exc).__name__}: {exc}", log=log,
                              hint="this is a xenforge bug; run with --debug for the traceback")
            err.__cause__ = exc
            return NodeResult(node.name, node.id, "failed", time.monotonic() - start, error=err)
        with contextlib.suppress(XenforgeError, OSError):  # built; the next build retries
            remove_tree(work)
        self.cache.write_ref(self.graph.recipe, node.name, {"id": node.id, "key": node.key()})
        self.progress.finished(node.name, "built", node.id[:12])
        return NodeResult(node.name, node.id, "built", seconds, out=self.cache.out(node.id))


def _as_stage_failure(node: Node, exc: XenforgeError, log: Path) -> StageFailed:
    if isinstance(exc, CommandFailed):
        err = StageFailed(node.name, exc.message, log=log)
    else:
        err = StageFailed(node.name, exc.message, log=log, hint=exc.hint)
    err.exit_code = exc.exit_code  # bad input found while building is still bad input (2)
    err.__cause__ = exc
    return err
