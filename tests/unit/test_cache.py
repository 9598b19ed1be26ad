"""The content-addressed cache: atomic commits, staging cleanup, locking across processes,
garbage collection, and `xenforge cache ls|du|gc`."""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import xf_test_stages

from xenforge import stages as stage_registry
from xenforge.build.executor import Executor
from xenforge.cache import Cache
from xenforge.cli import app as cli
from xenforge.cli.progress import Progress
from xenforge.plan.graph import Graph, Node, compute_ids

FORK = multiprocessing.get_context("fork")
ID_A = "a" * 64
ID_B = "b" * 64


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(autouse=True)
def _test_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)


def _put(cache: Cache, node_id: str, size: int = 1000, node: str = "n", stage: str = "s"
         ) -> Path:
    with cache.lock(node_id), cache.staging(node_id) as st:
        (st / "out" / "data").write_bytes(b"x" * size)
        return cache.commit(node_id, st, {"node": node, "stage": stage, "id": node_id,
                                          "finished": time.time()})


def _set_used(cache: Cache, node_id: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(cache.object_dir(node_id) / "manifest.json", (t, t))


# -- commit ------------------------------------------------------------------------------------

def test_commit_moves_staging_into_place(cache: Cache) -> None:
    with cache.lock(ID_A), cache.staging(ID_A) as st:
        (st / "out" / "data").write_text("hello")
        assert not cache.has(ID_A) and not cache.object_dir(ID_A).exists()
        target = cache.commit(ID_A, st, {"node": "n", "stage": "s"})
        assert not st.exists()
    assert target == cache.object_dir(ID_A)
    assert cache.has(ID_A)
    assert (cache.out(ID_A) / "data").read_text() == "hello"
    manifest = cache.manifest(ID_A)
    assert {k: manifest[k] for k in ("node", "stage")} == {"node": "n", "stage": "s"}
    record = manifest["files"]["data"]
    assert record["size"] == 5 and record["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert list(cache.tmp_dir.iterdir()) == []


def test_has_reads_a_manifest_again_only_when_its_file_changed(
        cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """has() is asked many times per build; a tree's manifest is megabytes: it is parsed
    once while the file stays the same, and again when it is emptied, damaged or replaced."""
    _put(cache, ID_A)
    reads: list[str] = []
    real = cache.store.read_manifest
    monkeypatch.setattr(cache.store, "read_manifest",
                        lambda node_id: reads.append(node_id) or real(node_id))
    assert all(cache.has(ID_A) for _ in range(5)) and reads == [ID_A]
    manifest = cache.object_dir(ID_A) / "manifest.json"
    text = manifest.read_text()
    time.sleep(0.02)  # file times tick per jiffy: the damage comes a tick after the check
    with open(manifest, "r+") as f:  # damaged in place: same inode, same size
        f.write("#" + text[1:])
    assert not cache.has(ID_A)
    manifest.write_text(text)  # the same bytes again (a new mtime)
    assert cache.has(ID_A)
    manifest.write_text("")  # emptied
    assert not cache.has(ID_A)
    assert len(reads) == 4


def test_a_failed_commit_leaves_no_object(cache: Cache, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(dst) == cache.object_dir(ID_A):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError), cache.lock(ID_A), cache.staging(ID_A) as st:
        (st / "out" / "data").write_text("hello")
        cache.commit(ID_A, st, {"node": "n"})
    assert not cache.has(ID_A)
    assert not cache.object_dir(ID_A).exists()
    assert list(cache.tmp_dir.iterdir()) == []


def test_an_object_dir_without_manifest_is_not_an_object(cache: Cache) -> None:
    (cache.out(ID_A)).mkdir(parents=True)
    (cache.out(ID_A) / "data").write_text("partial")
    assert not cache.has(ID_A)
    assert [e.id for e in cache.entries()] == []


def test_commit_replaces_an_incomplete_object_dir(cache: Cache) -> None:
    """A dir without manifest (a damaged store, a copy cut short) is not trusted: the next
    commit of that node replaces it instead of keeping it forever."""
    cache.out(ID_A).mkdir(parents=True)
    (cache.out(ID_A) / "data").write_text("partial")
    _put(cache, ID_A, size=10)
    assert cache.has(ID_A)
    assert (cache.out(ID_A) / "data").read_bytes() == b"x" * 10
    assert list(cache.tmp_dir.iterdir()) == []


def test_commit_when_another_process_committed_keeps_theirs(cache: Cache) -> None:
    _put(cache, ID_A, size=10)
    with cache.staging(ID_A) as st:
        (st / "out" / "data").write_text("mine")
        assert cache.commit(ID_A, st, {"node": "n"}) == cache.object_dir(ID_A)
    assert (cache.out(ID_A) / "data").read_bytes() == b"x" * 10
    assert list(cache.tmp_dir.iterdir()) == []


def _commit_many(root: Path, n: int) -> None:
    cache = Cache(root)
    for i in range(n):
        _put(cache, f"{i:064x}", size=200_000)


def test_readers_never_see_a_half_committed_object(cache: Cache) -> None:
    proc = FORK.Process(target=_commit_many, args=(cache.root, 40))
    proc.start()
    seen: set[str] = set()
    while True:
        finished = not proc.is_alive()
        for obj in cache.objects_dir.glob("*/*"):
            # an object dir is either absent or complete
            assert (obj / "manifest.json").is_file(), f"{obj} visible without manifest"
            assert (obj / "out" / "data").stat().st_size == 200_000
            seen.add(obj.name)
        if finished:
            break
    proc.join()
    assert proc.exitcode == 0 and len(seen) == 40


# -- staging -----------------------------------------------------------------------------------

def test_staging_is_removed_on_exception(cache: Cache) -> None:
    with pytest.raises(RuntimeError), cache.lock(ID_A), cache.staging(ID_A) as st:
        (st / "out" / "big").write_bytes(b"y" * 10_000)
        raise RuntimeError("stage crashed")
    assert not st.exists()
    assert not cache.has(ID_A)


def test_stale_staging_of_a_node_is_removed_by_its_next_staging(cache: Cache) -> None:
    stale = cache.tmp_dir / f"{ID_A}.4242.deadbeef"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "half").write_text("from a killed build")
    other = cache.tmp_dir / f"{ID_B}.4243.cafecafe"
    other.mkdir()
    with cache.lock(ID_A), cache.staging(ID_A) as st:
        assert not stale.exists()
        assert other.exists()  # another node's staging is not ours to touch
        assert list((st / "out").iterdir()) == []


def test_work_dir_is_fresh(cache: Cache) -> None:
    w = cache.work(ID_A)
    (w / "junk").write_text("left by a killed build")
    assert list(cache.work(ID_A).iterdir()) == []


# -- locking across processes ------------------------------------------------------------------

def _build_with_lock(root: Path, counter: Path, start: Any) -> None:
    cache = Cache(root)
    start.wait()
    with cache.lock(ID_A):
        if cache.has(ID_A):
            return
        with cache.staging(ID_A) as st:
            with open(counter, "a") as f:
                f.write(f"{os.getpid()}\n")
            with open(st / "out" / "data", "wb") as out:
                for _ in range(50):
                    out.write(b"z" * 10_000)
                    time.sleep(0.002)
            cache.commit(ID_A, st, {"node": "n"})


def test_processes_building_one_node_at_once_build_it_once(cache: Cache, tmp_path: Path
                                                           ) -> None:
    counter = tmp_path / "builds"
    start = FORK.Barrier(4)
    procs = [FORK.Process(target=_build_with_lock, args=(cache.root, counter, start))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    assert (cache.out(ID_A) / "data").read_bytes() == b"z" * 500_000
    assert [e.id for e in cache.entries()] == [ID_A]
    assert list(cache.tmp_dir.iterdir()) == []


def _slow_graph(tmp_path: Path) -> Graph:
    g = Graph(recipe="locktest")
    g.add(Node(name="slow", stage="slow-test",
               options={"counter": str(tmp_path / "runs"), "seconds": 1.0}))
    g.add(Node(name="after", stage="slow-test", inputs={"first": "slow"},
               options={"counter": str(tmp_path / "runs"), "seconds": 0.1, "payload_kib": 4}))
    compute_ids(g)
    return g


def _execute(root: Path, tmp_path: Path, start: Any, results: Any) -> None:
    graph = _slow_graph(tmp_path)
    start.wait()
    res = Executor(graph, Cache(root), Progress(quiet=True), jobs=2).run()
    results.put({name: r.status for name, r in res.items()})


def test_two_executors_on_one_cache_build_each_node_once(cache: Cache, tmp_path: Path) -> None:
    start = FORK.Barrier(2)
    results = FORK.Queue()
    procs = [FORK.Process(target=_execute, args=(cache.root, tmp_path, start, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    statuses = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    runs = (tmp_path / "runs").read_text().splitlines()
    assert sorted(line.split()[1] for line in runs) == ["after", "slow"]
    assert sorted(s["slow"] for s in statuses) == ["built", "cached"]
    assert sorted(s["after"] for s in statuses) == ["built", "cached"]
    graph = _slow_graph(tmp_path)
    assert (cache.out(graph.nodes["slow"].id) / "payload.bin").stat().st_size == 256 * 1024
    assert (cache.out(graph.nodes["after"].id) / "from-first.len").read_text() == "262144"
    assert list(cache.tmp_dir.iterdir()) == [] and list(cache.work_dir.iterdir()) == []


def test_a_failing_stage_commits_nothing(cache: Cache, tmp_path: Path) -> None:
    g = Graph(recipe="failtest")
    g.add(Node(name="bad", stage="fail-test"))
    g.add(Node(name="below", stage="slow-test", inputs={"x": "bad"},
               options={"counter": str(tmp_path / "runs"), "seconds": 0}))
    compute_ids(g)
    res = Executor(g, cache, Progress(quiet=True), jobs=2).run()
    assert res["bad"].status == "failed" and res["below"].status == "skipped"
    err = res["bad"].error
    assert err is not None
    text = err.render()
    assert "stage bad" in text and "exit code 4" in text and "error: it broke" in text
    assert err.log is not None and "compiling" in err.log.read_text()
    assert not cache.has(g.nodes["bad"].id)
    assert list(cache.tmp_dir.iterdir()) == []
    assert not (tmp_path / "runs").exists()


# -- gc ----------------------------------------------------------------------------------------

DAY = 86400.0


def _three(cache: Cache) -> tuple[str, str, str]:
    old_ref, old, new = "1" * 64, "2" * 64, "3" * 64
    for i, node_id in enumerate((old_ref, old, new)):
        _put(cache, node_id, size=100_000, node=f"n{i}")
    _set_used(cache, old_ref, 10 * DAY)
    _set_used(cache, old, 9 * DAY)
    _set_used(cache, new, 0)
    cache.write_ref("recipe", "n0", {"id": old_ref, "key": {}})
    return old_ref, old, new


def test_gc_by_age_keeps_referenced_and_recent(cache: Cache) -> None:
    old_ref, old, new = _three(cache)
    assert [e.id for e in cache.gc(older_than=5 * DAY, dry_run=True)] == [old]
    assert cache.has(old)
    assert [e.id for e in cache.gc(older_than=5 * DAY)] == [old]
    assert not cache.has(old) and cache.has(old_ref) and cache.has(new)
    assert not any(cache.tmp_dir.iterdir())


def test_gc_by_size_removes_least_recently_used_unreferenced_first(cache: Cache) -> None:
    old_ref, old, new = _three(cache)
    removed = cache.gc(max_bytes=250_000)
    assert [e.id for e in removed] == [old]
    assert cache.has(old_ref) and cache.has(new)
    removed = cache.gc(max_bytes=10)
    assert [e.id for e in removed] == [new]
    assert cache.has(old_ref), "the latest build of a recipe's node was collected"


def test_gc_keeps_what_a_build_holds_or_used_after_the_listing(cache: Cache) -> None:
    _old_ref, old, _new = _three(cache)
    with cache.lock(old):  # a build (e.g. reading it as an input) holds it: kept
        assert cache.gc(older_than=5 * DAY) == []
    assert cache.has(old)
    (entry,) = [e for e in cache.entries() if e.id == old]
    cache.touch(old)  # a build took it from the cache after gc listed it: kept
    assert cache._remove(entry) is False and cache.has(old)
    (entry,) = [e for e in cache.entries() if e.id == old]
    assert cache._remove(entry) is True and not cache.has(old)


def test_gc_removes_stale_staging_but_not_a_running_build(cache: Cache) -> None:
    stale = cache.tmp_dir / f"{ID_A}.{2 ** 22 + 1}.dead"  # its process is gone (no such pid)
    stale.mkdir()
    (cache.work_dir / ID_A).mkdir()
    running = cache.tmp_dir / f"{ID_B}.2.live"
    running.mkdir()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with cache.lock(ID_B):
            held.set()
            release.wait(10)

    # flock locks belong to the open file: another open (gc's) conflicts even in-process
    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        cache.gc()
    finally:
        release.set()
        t.join()
    assert not stale.exists() and not (cache.work_dir / ID_A).exists()
    assert running.exists()


# -- the CLI -----------------------------------------------------------------------------------

def test_cache_cli(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    old_ref, old, new = _three(cache)
    base = ["--cache-dir", str(cache.root), "cache"]
    assert cli.main([*base, "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [old_ref[:12], old[:12], new[:12]]  # LRU first
    assert all(" KiB " in ln for ln in lines), lines

    assert cli.main([*base, "du"]) == 0
    out = capsys.readouterr().out
    assert "s" in out.split() and "total" in out and str(cache.root) in out

    assert cli.main([*base, "gc", "--older-than", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {old[:12]}" in out and "would remove 1 entries" in out
    assert cache.has(old)
    assert cli.main([*base, "gc", "--max-size", "150K"]) == 0
    out = capsys.readouterr().out
    assert f"removed {old[:12]}" in out and f"removed {new[:12]}" in out
    assert [e.id for e in cache.entries()] == [old_ref]

    assert cli.main([*base, "gc", "--max-size", "lots"]) == 2
    assert "--max-size: 'lots' is not a size" in capsys.readouterr().err


def test_manifest_of_an_executor_build(cache: Cache, tmp_path: Path) -> None:
    g = _slow_graph(tmp_path)
    res = Executor(g, cache, Progress(quiet=True), jobs=1).run()
    node = g.nodes["after"]
    assert res["after"].status == "built"
    m = cache.manifest(node.id)
    assert m["node"] == "after" and m["id"] == node.id and m["stage"] == "slow-test"
    assert m["key"] == json.loads(json.dumps(node.key()))
    assert m["key"]["inputs"] == {"first": g.nodes["slow"].id}
    assert (cache.object_dir(node.id) / "log").read_text().startswith(
        f"[xenforge] node after id {node.id}")
    ref = cache.read_ref("locktest", "after")
    assert ref is not None and ref["id"] == node.id


def test_gc_empties_idle_scratch_dirs_but_not_one_in_use(cache: Cache) -> None:
    kbuild = cache.scratch("kbuild")
    idle, busy = kbuild / "kernel-dom0-aaaa", kbuild / "kernel-guest-bbbb"
    for d in (idle, busy):
        (d / "build").mkdir(parents=True)
        (d / "build" / "vmlinux.o").write_bytes(b"x" * 100_000)
        os.utime(d, (time.time() - 10 * DAY, time.time() - 10 * DAY))
    with open(kbuild / "kernel-guest-bbbb.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a kernel build is using it
        assert [e.node for e in cache.gc(older_than=5 * DAY, dry_run=True)] == [
            "kbuild/kernel-dom0-aaaa"]
        assert idle.exists()
        removed = cache.gc(older_than=5 * DAY)
    assert [e.node for e in removed] == ["kbuild/kernel-dom0-aaaa"]
    assert removed[0].size >= 100_000
    assert not idle.exists() and busy.exists()
    # a recent one goes only when the cache is over the size asked for
    os.utime(busy)
    assert cache.gc(older_than=5 * DAY) == []
    assert [e.node for e in cache.gc(max_bytes=1000)] == ["kbuild/kernel-guest-bbbb"]


# -- late inputs: a node that starts before what it consumes is built -----------------------

def test_a_node_with_a_late_input_runs_while_that_input_builds(cache: Cache,
                                                               tmp_path: Path) -> None:
    g = Graph(recipe="latetest")
    g.add(Node(name="slow", stage="slow-test",
               options={"counter": str(tmp_path / "runs"), "seconds": 2.0}))
    g.add(Node(name="late", stage="late-test", inputs={"dep": "slow"},
               options={"marker": str(tmp_path / "marker")}))
    compute_ids(g)
    results = Executor(g, cache, Progress(quiet=True), jobs=2).run()
    assert {n: r.status for n, r in results.items()} == {"slow": "built", "late": "built"}
    # it started while its input was still being built, and then saw the finished output
    assert (tmp_path / "marker").read_text() == "started late dep-ready=False\n"
    assert results["late"].started < results["slow"].ended
    assert results["late"].waited > 1.0
    assert (cache.out(g.nodes["late"].id) / "saw.len").read_text() == str(256 * 1024)
    assert cache.manifest(g.nodes["late"].id)["waited"] > 1.0


def test_a_late_input_that_fails_fails_its_waiting_node(cache: Cache, tmp_path: Path) -> None:
    g = Graph(recipe="latetest")
    g.add(Node(name="bad", stage="fail-test"))
    g.add(Node(name="late", stage="late-test", inputs={"dep": "bad"},
               options={"marker": str(tmp_path / "marker")}))
    compute_ids(g)
    results = Executor(g, cache, Progress(quiet=True), jobs=2).run()
    assert results["bad"].status == "failed" and results["late"].status == "failed"
    assert results["late"].error is not None
    assert "its input bad was not built" in results["late"].error.render()
    assert not cache.has(g.nodes["late"].id)


# -- verifying objects before use ----------------------------------------------------------

def test_a_tampered_object_is_found_and_rebuilt_never_used(cache: Cache, tmp_path: Path
                                                           ) -> None:
    g = Graph(recipe="verify")
    g.add(Node(name="slow", stage="slow-test",
               options={"counter": str(tmp_path / "runs"), "seconds": 0.05}))
    g.add(Node(name="after", stage="slow-test", inputs={"first": "slow"},
               options={"counter": str(tmp_path / "runs"), "seconds": 0.05}))
    compute_ids(g)
    Executor(g, cache, Progress(quiet=True), jobs=2).run()
    slow = cache.out(g.nodes["slow"].id) / "payload.bin"
    assert cache.verified(g.nodes["slow"].id) == []
    # the same size, other bytes, the old mtime restored: found by `verify --full` only ...
    st = slow.stat()
    data = bytearray(slow.read_bytes())
    data[100] ^= 0xFF
    slow.write_bytes(bytes(data))
    os.utime(slow, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.store.verify(g.nodes["slow"].id) == []
    assert "its content changed" in cache.store.verify(g.nodes["slow"].id, full=True)[0]
    # ... a changed mtime (an edit) is found cheaply, and the object is rebuilt
    slow.write_bytes(bytes(data))
    assert cache.verified(g.nodes["slow"].id)
    res = Executor(g, cache, Progress(quiet=True), jobs=2).run()
    assert res["slow"].status == "built" and res["after"].status == "cached"
    assert cache.verified(g.nodes["slow"].id) == []
    assert (tmp_path / "runs").read_text().count(" slow\n") == 2


def test_an_emptied_or_wrong_manifest_is_no_object(cache: Cache) -> None:
    _put(cache, ID_A)
    (cache.object_dir(ID_A) / "manifest.json").write_text("")
    assert not cache.has(ID_A)
    (cache.object_dir(ID_A) / "manifest.json").write_text("[1, 2]")
    assert not cache.has(ID_A)
    assert cache.entries() == []  # listed nowhere, and gc may take the directory
    (cache.object_dir(ID_A) / "manifest.json").write_text('{"id": "' + ID_B + '"}')
    assert not cache.has(ID_A)  # a manifest of another object


def test_gc_takes_an_object_dir_without_a_valid_manifest(cache: Cache) -> None:
    _put(cache, ID_A)
    (cache.object_dir(ID_A) / "manifest.json").write_text("")
    cache.gc()
    assert not cache.object_dir(ID_A).exists()


def test_an_input_edited_during_a_build_never_poisons_the_cache(cache: Cache,
                                                                 tmp_path: Path) -> None:
    """The reported poisoning: an input file edited after planning (while another node
    runs) or while its node runs; the node fails, nothing is stored under the old id."""
    patch = tmp_path / "0001.patch"
    patch.write_text("original\n")

    def graph() -> Graph:
        g = Graph(recipe="poison")
        g.add(Node(name="slow", stage="slow-test", files={"patch": patch},
                   options={"counter": str(tmp_path / "runs"), "seconds": 1.5}))
        compute_ids(g)
        return g

    planned = graph()
    patch.write_text("edited before the node started\n")
    res = Executor(planned, cache, Progress(quiet=True), jobs=2).run()
    assert res["slow"].status == "failed" and not cache.has(planned.nodes["slow"].id)
    assert res["slow"].error is not None
    assert "changed after the build was planned" in res["slow"].error.render()

    patch.write_text("original\n")
    g = graph()
    assert g.nodes["slow"].id == planned.nodes["slow"].id
    timer = threading.Timer(0.5, lambda: patch.write_text("edited while building\n"))
    timer.start()
    res = Executor(g, cache, Progress(quiet=True), jobs=2).run()
    timer.join()
    assert res["slow"].status == "failed" and not cache.has(g.nodes["slow"].id)
    assert "changed while the node was built" in res["slow"].error.render()  # type: ignore[union-attr]
    patch.write_text("original\n")
    assert Executor(graph(), cache, Progress(quiet=True), jobs=2).run()["slow"].status == \
        "built"


def test_an_edited_folder_of_a_list_of_inputs_is_named_alone(cache: Cache,
                                                             tmp_path: Path) -> None:
    """A rootfs's elements are a list of folders: the error names the one edited."""
    folders = [tmp_path / "elem-a", tmp_path / "elem-b"]
    for f in folders:
        f.mkdir()
        (f / "README.rst").write_text(f"{f.name}\n")
    g = Graph(recipe="folders")
    g.add(Node(name="slow", stage="slow-test", files={"elements": folders},
               options={"counter": str(tmp_path / "runs"), "seconds": 0}))
    compute_ids(g)
    (folders[1] / "README.rst").write_text("edited\n")
    res = Executor(g, cache, Progress(quiet=True), jobs=1).run()
    assert res["slow"].error is not None
    message = res["slow"].error.render()
    assert f"input elements changed after the build was planned: {folders[1]}" in message
    assert str(folders[0]) not in message and "PosixPath" not in message


def test_clear_stale_takes_only_what_dead_builds_left(tmp_path: Path) -> None:
    """What a killed build's watchdog and gc delete: staging and work dirs of nodes nobody
    holds the lock of and whose process (named in the entry) is dead - never a live
    process's remote upload (it runs after the node's lock is released), a dir of a node
    being built, or another process's dot-file."""
    cache = Cache(tmp_path / "cache")
    live, dead = os.getpid(), 2 ** 22 + 1  # above pid_max's default: no such process
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    names = {"tmp": [f"{a}.{dead}.1f2e", f"{a}.push.{live}.9a8b.tar.zst",
                     f"{a}.push.{dead}.9a8b.tar.zst", f"{b}.{live}.77aa", f"{a}.gc.3c3c",
                     ".xenforge-probe-x1y2", f"{c}.{dead}.0000"],
             "work": [a, c]}
    for area, entries in names.items():
        for name in entries:
            (tmp_path / "cache" / area / name).mkdir()
    with cache.lock(c):  # a build of c runs: its dirs are its own
        stale = cache.clear_stale()
    assert sorted(stale.removed) == sorted([f"tmp/{a}.{dead}.1f2e",
                                            f"tmp/{a}.push.{dead}.9a8b.tar.zst",
                                            f"tmp/{a}.gc.3c3c", f"work/{a}"])
    assert sorted(p.name for p in cache.tmp_dir.iterdir()) == sorted(
        [f"{a}.push.{live}.9a8b.tar.zst", f"{b}.{live}.77aa", ".xenforge-probe-x1y2",
         f"{c}.{dead}.0000"])
    assert [p.name for p in cache.work_dir.iterdir()] == [c]
    assert not stale.errors and "deleted 4 staging/work dir(s)" in stale.summary()
