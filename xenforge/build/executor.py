"""Run a graph: cached nodes are skipped, the others run in dependency order - independent
ones in parallel, heavy compiler stages one at a time - each into a staging dir that is
committed to the cache only on success.

A stage may declare *late inputs* (:attr:`Stage.late_inputs`): its node starts before they
are built and waits for them inside the stage (``ctx.wait_input``), so a root filesystem is
debootstrapped while the kernel it installs at the end still compiles.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from xenforge.cache import Cache
from xenforge.cache.remote import RemoteCache
from xenforge.core import cpuacct, diskfull
from xenforge.core import run as runner
from xenforge.core.errors import CommandFailed, InputError, StageFailed, XenforgeError
from xenforge.core.files import note
from xenforge.core.leftovers import remove_tree
from xenforge.core.sandbox import Sandbox
from xenforge.plan.graph import Graph, Node, content_hash, explain_change
from xenforge.stages import get_stage
from xenforge.stages.base import Stage, StageContext


class Reporter(Protocol):
    """What the executor tells the person or program watching (see xenforge.cli.progress)."""

    def line(self, text: str) -> None: ...
    def started(self, node: str, log: str) -> None: ...
    def finished(self, node: str, status: str, detail: str = "",
                 seconds: float | None = None) -> None: ...
    def cached(self, node: str, node_id: str, detail: str = "") -> None: ...


@dataclass
class NodeResult:
    name: str
    id: str
    status: str  # "cached", "built", "failed", "skipped"
    seconds: float = 0.0  # wall time of the build (waiting for late inputs excluded)
    out: Path | None = None
    error: XenforgeError | None = None
    waited: float = 0.0  # seconds spent waiting for late inputs
    started: float = 0.0  # time.monotonic() when the node started
    ended: float = 0.0
    cpu: float | None = None  # CPU seconds of its commands and its thread (None: not counted)

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "built")


class InputFailed(StageFailed):
    """A late input of a running node failed or was skipped."""


class Executor:
    def __init__(self, graph: Graph, cache: Cache, progress: Reporter, *,
                 jobs: int | None = None, logs_dir: Path | None = None,
                 remote: RemoteCache | None = None, push: set[str] | None = None,
                 fetched: dict[str, str] | None = None, resolved: bool = False) -> None:
        """``remote``: every node built is uploaded there (unless it is read-only), and the
        cached nodes named in ``push``; ``fetched``: how nodes came from it (for the
        report); ``resolved``: the graph is a resolution's, which checked every cached
        object the build reads, so a node cached then is not opened again (without it,
        each cached node is checked here). See :func:`xenforge.build.resolve.resolve`."""
        self.graph = graph
        self.cache = cache
        self.remote = remote if remote is not None and remote.writable else None
        self.push = push or set()
        self.fetched = fetched or {}
        self.resolved = resolved
        self.progress = progress
        self.jobs = jobs or os.cpu_count() or 2
        self.logs_dir = logs_dir or cache.state.logs(graph.recipe)
        self.results: dict[str, NodeResult] = {}
        self._done = {name: threading.Event() for name in graph.nodes}
        self._lock = threading.Lock()
        self._upload_pool = cf.ThreadPoolExecutor(max_workers=2)
        self._uploads: list[cf.Future[None]] = []

    def log_path(self, node: Node) -> Path:
        return self.logs_dir / f"{node.name.replace(':', '-').replace('/', '_')}.log"

    def run(self) -> dict[str, NodeResult]:
        # if this process is killed, a watchdog stops its commands and releases their
        # mounts at once (xenforge.build.reaper); the next build also looks, in case that
        # one was killed too
        with runner.watchdog([sys.executable, "-m", "xenforge.build.reaper",
                              str(self.cache.root)], log=self.logs_dir / "build.log"):
            return self._run()

    def _run(self) -> dict[str, NodeResult]:
        orphans = runner.stop_orphans(self.cache.orphaned)
        if orphans:
            self.progress.line(f"stopped {len(orphans)} process(es) a killed build left running")
        pending = dict(self.graph.nodes)
        failed = False
        heavy_running: set[cf.Future[NodeResult]] = set()
        # a thread per node at most: a node waiting for a late input holds its thread
        with cf.ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
            running: dict[cf.Future[NodeResult], str] = {}
            try:
                while pending or running:
                    if failed:
                        self._skip(pending)
                    else:
                        self._submit_ready(pool, pending, running, heavy_running)
                    if not running:
                        break
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        heavy_running.discard(fut)
                        running.pop(fut)
                        if not fut.result().ok:
                            failed = True
            except BaseException:  # SIGINT/SIGTERM: stop commands, let stages clean up
                runner.kill_all()
                self._skip(pending)
                cf.wait(running)
                self._upload_pool.shutdown(wait=True, cancel_futures=True)
                raise
        self._skip(pending)
        busy = sum(not f.done() for f in self._uploads)
        if busy:
            self.progress.line(f"waiting for {busy} upload(s) to the remote cache")
        self._upload_pool.shutdown(wait=True)
        return self.results

    def _skip(self, pending: dict[str, Node]) -> None:
        """Nodes that will not run (after a failure): skipped, and their waiters told."""
        for name, node in pending.items():
            self._record(NodeResult(name, node.id, "skipped"))
        pending.clear()

    def _record(self, result: NodeResult) -> NodeResult:
        with self._lock:
            self.results[result.name] = result
        self._done[result.name].set()
        return result

    def _ready(self, node: Node) -> bool:
        if self.cache.has(node.id):  # a cached node needs nothing (its inputs may be absent)
            return True
        late = set(get_stage(node.stage).late_inputs)
        for label, ref in node.inputs.items():
            if label in late:
                continue
            for dep in [ref] if isinstance(ref, str) else ref:
                res = self.results.get(dep)
                if res is None or not res.ok:
                    return False
        return True

    def _submit_ready(self, pool: cf.ThreadPoolExecutor, pending: dict[str, Node],
                      running: dict[cf.Future[NodeResult], str],
                      heavy_running: set[cf.Future[NodeResult]]) -> None:
        """Start every pending node whose (early) inputs are done; one heavy build at most."""
        for name, node in list(pending.items()):
            gone = [d for d in node.deps() if d not in self.graph.nodes]
            if gone and not self.cache.has(node.id):  # its object vanished since resolve
                del pending[name]
                self._record(NodeResult(name, node.id, "failed", error=StageFailed(
                    name, f"its object left the cache during the build, and its input "
                    f"{gone[0]} was not planned", hint="build again (`xenforge cache gc` "
                    "must not run while a build does)")))
                continue
            if not self._ready(node):
                continue
            heavy = get_stage(node.stage).heavy and not self.cache.has(node.id)
            if heavy and heavy_running:
                continue
            del pending[name]
            fut = pool.submit(self._run_node, node)
            running[fut] = name
            if heavy:
                heavy_running.add(fut)

    def _wait_for(self, node: Node, label: str, idles: bool, waited: list[float]) -> Path:
        """The output of ``node``'s late input ``label`` once it is built (the stage waits;
        when that idles the node, the time is not node time)."""
        ref = node.inputs.get(label)
        if not isinstance(ref, str):
            raise StageFailed(node.name, f"late input {label!r} must be one node")
        t0 = time.monotonic()
        while not self._done[ref].wait(0.5):
            runner.check_cancelled()
        if idles:
            waited.append(time.monotonic() - t0)
        res = self.results[ref]
        if not res.ok or res.out is None:
            raise InputFailed(node.name, f"its input {ref} was not built ({res.status})")
        return res.out

    def _run_node(self, node: Node) -> NodeResult:
        try:
            if self.cache.has(node.id) and not self._damaged(node):
                result = self._record(self._cached(node, self.fetched.get(node.name, "")))
                if node.name in self.push:
                    self._share(node)
                return result
            with self.cache.lock(node.id):
                if self.cache.has(node.id):  # another build made it while we waited?
                    problems = self.cache.verified(node.id)
                    if not problems:
                        return self._record(self._cached(node, "built by another run"))
                    # a cached object whose files no longer match its manifest: never used
                    self.progress.line(f"corrupt {node.name}  {node.id[:12]}: "
                                       f"{problems[0]}; rebuilding it")
                    self.cache.discard(node.id)
                result = self._record(self._build(node))
            if result.status == "built":
                self._share(node)
            return result
        except OSError as exc:  # taking the lock or a corrupt object out on a full disk
            if not diskfull.is_disk_full(exc):
                raise
            err = disk_full(node, exc, self._dirs(node), root=self.cache.root)
            self.progress.finished(node.name, "FAILED", err.message)
            return self._record(NodeResult(node.name, node.id, "failed", error=err))
        except BaseException:
            self._record(NodeResult(node.name, node.id, "failed",
                                    error=StageFailed(node.name, "interrupted")))
            raise

    def _share(self, node: Node) -> None:
        """Upload in the background: the nodes that consume this one need not wait."""
        if self.remote is not None:
            with self._lock:
                self._uploads.append(self._upload_pool.submit(self._upload, node))

    def _upload(self, node: Node) -> None:
        """Share a node's object through the remote cache; a failed upload is reported and
        the build goes on (the object is complete here)."""
        if self.remote is None:
            return
        try:
            took = self.remote.push(node.id, self.cache.store)
        except (XenforgeError, OSError) as exc:  # RemoteError, or tar failing
            text = exc.render() if isinstance(exc, XenforgeError) else str(exc)
            self.progress.line(f"upload of {node.name} to the remote cache failed: {text}")
            return
        self.progress.line(f"uploaded {node.name}  {node.id[:12]}: "
                           f"{took.describe('sent')}")

    def _damaged(self, node: Node) -> bool:
        """Whether a cached node's object is damaged (after a resolution: not asked again;
        it checked what the build reads, and nothing reads the rest)."""
        return not self.resolved and bool(self.cache.verified(node.id))

    def _cached(self, node: Node, detail: str = "") -> NodeResult:
        self.cache.touch(node.id)
        self._write_refs(node)
        self.progress.cached(node.name, node.id, detail)
        now = time.monotonic()
        return NodeResult(node.name, node.id, "cached", out=self.cache.out(node.id),
                          started=now, ended=now)

    def _build(self, node: Node) -> NodeResult:
        stage_cls = get_stage(node.stage)
        log = self.log_path(node)
        recipe, own = self.graph.origins_of(node.name)[0]
        previous = self.cache.read_ref(recipe, own)
        self.progress.started(node.name, str(log))
        start = time.monotonic()
        waited: list[float] = []
        late = set(stage_cls.late_inputs)
        stage = stage_cls()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)  # on a full disk: the node fails
            log.write_text(f"[xenforge] node {node.name} id {node.id}\n"
                           f"[xenforge] why: {explain_change(node, previous)}\n")
            work = self.cache.work(node.id)
            with self.cache.staging(node.id) as staging:
                ctx = StageContext(
                    node=node.name, node_id=node.id,
                    options=stage.Options.model_validate(node.options),
                    inputs={label: self._input_paths(ref) for label, ref in node.inputs.items()
                            if label not in late or self._is_done(ref)},
                    files={label: ref if isinstance(ref, Path) else tuple(ref)
                           for label, ref in node.files.items()},
                    out=staging / "out", work=work, log=log,
                    epoch=node.env.epoch if node.env else 0,
                    compiler_cache=self.cache.ccache_dir, jobs=self.jobs,
                    scratch=self.cache.scratch,
                    late=[label for label in late if label in node.inputs
                          and not self._is_done(node.inputs[label])],
                    waiter=lambda label, idles: self._wait_for(node, label, idles, waited),
                    sandbox=self._sandbox(node, stage_cls, work, staging))
                check_files(node, "after the build was planned")
                own_cpu = time.thread_time()  # the stage's Python work (hashing, copies)
                with runner.owned_by(str(self.cache.lock_file(node.id))), \
                        cpuacct.group(node.name) as group, runner.accounted(group):
                    stage.run(ctx)
                    commands = group.seconds() if group is not None else None
                cpu = None if commands is None else \
                    commands + time.thread_time() - own_cpu
                check_files(node, "while the node was built")
                waited.append(ctx.idle)
                seconds = time.monotonic() - start - sum(waited)
                shutil.copyfile(log, staging / "log")
                manifest = {"node": node.name, "id": node.id, "stage": node.stage,
                            "recipe": self.graph.recipe, "key": node.key(),
                            "seconds": round(seconds, 1), "waited": round(sum(waited), 1),
                            # its commands' CPU time and its own thread's (None: the
                            # host cannot count the commands')
                            "cpu_seconds": None if cpu is None else round(cpu, 1),
                            "finished": time.time()}
                self.cache.commit(node.id, staging, manifest)
        except XenforgeError as exc:
            err = exc if isinstance(exc, StageFailed) else \
                _as_stage_failure(node, exc, log, self._dirs(node), self.cache.root)
            _note(log, f"FAILED: {err.render()}")
            self._drop_work(node)
            self.progress.finished(node.name, "FAILED", f"log: {log}")
            return NodeResult(node.name, node.id, "failed", time.monotonic() - start,
                              error=err, waited=sum(waited), started=start,
                              ended=time.monotonic())
        except Exception as exc:  # a bug in a stage: still name the node and the log
            self._drop_work(node)
            if diskfull.is_disk_full(exc):  # no bug: no room
                err = disk_full(node, exc, self._dirs(node), root=self.cache.root, log=log)
                _note(log, f"FAILED: {err.render()}")
                self.progress.finished(node.name, "FAILED", f"log: {log}")
            else:
                _note(log, "internal error:\n" + "".join(traceback.format_exception(exc)))
                self.progress.finished(node.name, "FAILED", f"log: {log}")
                err = StageFailed(node.name, f"internal error: {type(exc).__name__}: {exc}",
                                  log=log, hint="this is a xenforge bug; run with --debug for "
                                  "the traceback")
            err.__cause__ = exc
            return NodeResult(node.name, node.id, "failed", time.monotonic() - start, error=err,
                              started=start, ended=time.monotonic())
        self._drop_work(node)
        self._write_refs(node, built=True)
        idle = sum(waited)
        detail = node.id[:12] + (f" (waited {idle:.0f}s for inputs)" if idle >= 1 else "")
        self.progress.finished(node.name, "built", detail, seconds)
        return NodeResult(node.name, node.id, "built", seconds, out=self.cache.out(node.id),
                          waited=sum(waited), started=start, ended=time.monotonic(), cpu=cpu)

    def _sandbox(self, node: Node, stage_cls: type[Stage], work: Path,
                 staging: Path) -> Sandbox | None:
        """The buildroot a stage's commands run in: its ``buildroot`` input, showing the
        node's work, staging and the cache's scratch dirs (writable) and its inputs."""
        ref = node.inputs.get("buildroot")
        if not stage_cls.buildroot or not isinstance(ref, str):
            return None
        box = Sandbox(root=self.cache.out(self.graph.nodes[ref].id) / "root",
                      release=node.env.target if node.env else ref,
                      writable=[work, staging, self.cache.ccache_dir, self.cache.scratch_dir],
                      readable=[self.cache.out(self.graph.nodes[dep].id)
                                for dep in node.deps() if dep != ref])
        box.check_paths()
        return box

    def _write_refs(self, node: Node, *, built: bool = False) -> None:
        """What each recipe's node was last built as (a matrix node stands for several).
        A ref is a note for "why rebuilt" and gc: one that cannot be written (a full disk)
        is reported, and the node, complete in the store, stays built or cached."""
        for recipe, own in self.graph.origins_of(node.name):
            try:
                self.cache.write_ref(recipe, own, {"id": node.id, "key": node.key()})
            except OSError as exc:
                self.progress.line(f"{node.name} is {'built' if built else 'cached'}, but "
                                   f"its ref could not be written: {exc.strerror} "
                                   f"({self.cache.refs_dir})")
                return

    def _drop_work(self, node: Node) -> None:
        """A finished node's scratch space is not kept, built or failed (a failed kernel's
        is gigabytes, on a disk that may just have filled up); if removing it fails, the
        next build of the node retries. (An interrupted build leaves it to that build.)"""
        with contextlib.suppress(XenforgeError, OSError):
            remove_tree(self.cache.work_dir / node.id)

    def _dirs(self, node: Node) -> list[Path]:
        """Where building ``node`` writes: its staging and work dirs, its log, the cache's
        scratch dirs and the store (for naming the disk that is full)."""
        return [self.cache.tmp_dir, self.cache.work_dir, self.log_path(node).parent,
                self.cache.scratch_dir, self.cache.objects_dir, self.cache.ccache_dir]

    def _is_done(self, ref: str | list[str]) -> bool:
        names = [ref] if isinstance(ref, str) else ref
        return all(self.results.get(n) is not None and self.results[n].ok for n in names)

    def _input_paths(self, ref: str | list[str]) -> Path | tuple[Path, ...]:
        if isinstance(ref, str):
            return self.cache.out(self.graph.nodes[ref].id)
        return tuple(self.cache.out(self.graph.nodes[r].id) for r in ref)


def check_files(node: Node, when: str) -> None:
    """The node's input files still hash to what its id was computed from (checked when it
    starts and again before its output is committed, so an object always holds what its id
    says: an input edited meanwhile fails the node, and nothing is stored)."""
    for label, ref in node.files.items():
        paths = [ref] if isinstance(ref, Path) else list(ref)
        recorded = node.file_hashes.get(label)
        was = [recorded] if isinstance(ref, Path) else list(recorded or [])
        try:
            now = [content_hash(p, memo=False) for p in paths]
        except OSError as exc:
            raise InputError(f"input {label} ({', '.join(map(str, paths))}) cannot be read: "
                             f"{exc}", where=f"stage {node.name}") from exc
        if now != was:  # name the edited ones (all, if the list itself changed)
            changed = [str(p) for p, h, w in zip(paths, now, was, strict=False) if h != w] or \
                [str(p) for p in paths]
            raise InputError(f"input {label} changed {when}: {', '.join(changed)}",
                             where=f"stage {node.name}",
                             hint="nothing was stored; build again (the new content gets "
                             "its own id)")


def _as_stage_failure(node: Node, exc: XenforgeError, log: Path, dirs: list[Path],
                      root: Path) -> StageFailed:
    if isinstance(exc, CommandFailed):
        said = any(os.strerror(e) in t for t in exc.tail for e in diskfull.DISK_FULL)
        full = diskfull.describe(dirs, root=root) if said else None
        hint = (f"the disk is full: {full}; free space there and build again"
                if full else "")
        err = StageFailed(node.name, exc.message, log=log, hint=hint)
    else:
        err = StageFailed(node.name, exc.message, log=log, hint=exc.hint)
    err.exit_code = exc.exit_code  # bad input found while building is still bad input (2)
    err.__cause__ = exc
    return err



def disk_full(node: Node, exc: OSError, dirs: list[Path], *, root: Path | None = None,
              log: Path | None = None) -> StageFailed:
    """A node that found no room to write, said so (not as an internal error): the
    filesystem, how full it is, the node's dirs on it; nothing of the node is kept."""
    return StageFailed(node.name, diskfull.message(exc, dirs, root),
                       log=log if log is not None and log.exists() else None,
                       hint=f"{diskfull.HINT}; nothing of this node was kept")


def _note(log: Path, text: str) -> None:
    """A line for a failed node's log; a log on a full disk loses it (the error itself
    is reported all the same)."""
    with contextlib.suppress(OSError):
        note(log, text)
