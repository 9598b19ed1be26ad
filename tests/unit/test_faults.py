"""Faults a build must survive, injected for real: a source server that drops, stalls,
drips and lies (tests/helpers/badserver.py), a cache on a small loop-mounted ext4 that
fills up (tests/helpers/loopfs.py), and a byte flipped in a cached object. Each ends in a
clear error (or a rebuild), never in a build from bytes that were not verified, and
leaves a cache the next build can use.

The single-download cases (one fault, one fetch) are in test_sources.py; here each fault
goes through ``xenforge build`` (the CLI, a real recipe or a test graph, the executor, the
cache) and the build after it.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import testgraphs
from badserver import KINDS, BadServer, source_tarball
from loopfs import fill, free_bytes, loop_ext4, unavailable

import xenforge.plan
from xenforge import stages as stage_registry
from xenforge.cache import Cache
from xenforge.cache.store import LocalStore
from xenforge.cli import app as cli
from xenforge.core.files import write_json_atomic
from xenforge.core.hashing import sha256_file
from xenforge.plan import plan
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"

#: seconds: a stalled read gives up after IDLE; a drip (a byte a second, never idle that
#: long) is stopped by the overall TIMEOUT of a download
IDLE, TIMEOUT = 1.6, 2.4


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # cli.main installs its own
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(autouse=True)
def _own_ccache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENFORGE_CCACHE_DIR", str(tmp_path / "ccache"))
    monkeypatch.delenv("XENFORGE_STATE_DIR", raising=False)
    monkeypatch.delenv("XENFORGE_REMOTE_CACHE", raising=False)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _objects_ok(cache: Cache | Path) -> None:
    """Every object dir of the cache is a complete object whose files match its manifest
    (hashed in full), and nothing is left in tmp/ (a Path: the cache's root, which is not
    created if it is not there)."""
    root = cache.root if isinstance(cache, Cache) else cache
    store = LocalStore(root / "objects", root / "tmp")
    for obj in store.objects():
        assert store.read_manifest(obj.name) is not None, f"{obj}: a half object"
        assert store.verify(obj.name, full=True) == [], obj
    assert not (root / "tmp").exists() or list((root / "tmp").iterdir()) == []


# -- a source server that misbehaves -----------------------------------------------------------

@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[BadServer, Path]]:
    """The fixtures' kernel recipe with four kernels, each from its own url source on a
    server with one fault each (drop, stall, drip, wrong bytes)."""
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    files = {f"{kind}.tar.gz": source_tarball(fx / "src" / "linux-mini", kind) for kind in KINDS}
    server = BadServer(files, {f"{kind}.tar.gz": kind for kind in KINDS})
    try:
        kernels = "".join(
            f"  {kind}:\n    line: kernel_patches/mini\n    fragments: [base]\n"
            f"    source: {{url: \"{server.url(name)}\", sha256: {server.sha256(name)}}}\n"
            for kind, name in ((k, f"{k}.tar.gz") for k in KINDS))
        recipe = fx / "faults.yaml"
        recipe.write_text(f"schema: 1\nname: faults\nkernels:\n{kernels}")
        yield server, recipe
    finally:
        server.stop()


def _source_nodes(recipe: Path) -> dict[str, tuple[str, str, str, str]]:
    """fault kind -> (source node, its id, the tree node made from it, the tree's id)."""
    graph = plan(load_recipe(recipe))
    out = {}
    for node in graph.nodes.values():
        if node.stage != "source":
            continue
        kind = node.options["spec"]["url"].rsplit("/", 1)[1].split(".")[0]
        tree = next(n for n in graph.nodes.values()
                    if n.stage == "tree" and node.name in n.deps())
        out[kind] = (node.name, node.id, tree.name, tree.id)
    assert sorted(out) == sorted(KINDS)
    return out


def test_download_faults_fail_the_build_clearly_and_store_nothing(
        faulty: tuple[BadServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One `xenforge build` whose four sources fail four ways at once: each is retried
    (but wrong bytes, which are complete: at once), each error names its URL and what
    went wrong, exit 1, nothing of them in the cache or the download store; once the
    server is sound the same build downloads everything again and succeeds."""
    server, recipe = faulty
    monkeypatch.setenv("XENFORGE_DOWNLOAD_IDLE", str(IDLE))
    monkeypatch.setenv("XENFORGE_DOWNLOAD_TIMEOUT", str(TIMEOUT))
    nodes = _source_nodes(recipe)
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--cache-dir", str(cache_dir), "build", str(recipe), "-o", str(out), "--plain",
            *[a for _src, _sid, tree, _tid in nodes.values() for a in ("--target", tree)]]

    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out and "internal error" not in err
    errors = {line for line in err.splitlines() if line.startswith("error: ")}
    assert len(errors) == len(KINDS), err
    what = {"drop": r"after 3 tries: connection lost after \d+ bytes of "
                    rf"{len(server.files['drop.tar.gz'])}",
            "stall": r"after 3 tries: stalled after \d+ bytes of \d+",
            "drip": rf"after 3 tries: not done within {TIMEOUT:.0f}s "
                    r"\(XENFORGE_DOWNLOAD_TIMEOUT\)",
            "wrong": "checksum mismatch for {url}: expected sha256 {sha}, got [0-9a-f]{{64}}"}
    for kind, (src, _sid, _tree, _tid) in nodes.items():
        name = f"{kind}.tar.gz"
        url = server.url(name)
        line = next((e for e in errors if f"stage {src}:" in e), None)
        assert line is not None, f"no error for {src}: {err}"
        assert url in line, line
        pattern = what[kind].format(url=re.escape(url), sha=server.sha256(name))
        assert re.search(pattern, line), (kind, line)
    assert server.hits == {"drop.tar.gz": 3, "stall.tar.gz": 3, "drip.tar.gz": 3,
                           "wrong.tar.gz": 1}
    # nothing unverified was kept: no object, no stored download, no partial file
    cache = Cache(cache_dir)
    for _src, src_id, _tree, tree_id in nodes.values():
        assert not cache.object_dir(src_id).exists() and not cache.has(tree_id)
    downloads = cache.scratch("downloads")
    assert _files(downloads) == [], _files(downloads)
    assert list(cache.tmp_dir.iterdir()) == []
    assert not (out / "faults").exists()

    server.heal()
    before = dict(server.hits)
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "faults: 8 built, 0 cached" in capsys.readouterr().out
    # each file downloaded again, once, from its first byte (no partial file resumed)
    assert {n: server.hits[n] - before[n] for n in before} == {n: 1 for n in before}
    for kind, (_src, src_id, _tree, tree_id) in nodes.items():
        name = f"{kind}.tar.gz"
        assert sha256_file(cache.out(src_id) / name) == server.sha256(name)
        assert sha256_file(downloads / "sha256" / server.sha256(name)) == server.sha256(name)
        tree = cache.out(tree_id) / "tree"
        assert (tree / f"padding-{kind}.bin").stat().st_size == 256 << 10
        assert "config XENFORGE_TEST" in (tree / "init" / "Kconfig").read_text()
    assert sorted(p.name for p in _files(downloads)) == sorted(
        server.sha256(n) for n in server.files)
    _objects_ok(cache)


# -- the disk of the cache fills up -----------------------------------------------------------

MIB = 1 << 20


def _install_test_graphs(monkeypatch: pytest.MonkeyPatch, spec: testgraphs.Spec) -> None:
    for name, target in testgraphs.test_stages().items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    monkeypatch.setattr(xenforge.plan, "plan", testgraphs.planner(spec))


def _flip_byte(path: Path, offset: int) -> None:
    """One bit of a file flipped in place: same size, same inode."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _sums(folder: Path) -> dict[str, str]:
    """An export's artifacts by path -> sha256 (its own documents left out)."""
    docs = {"manifest.json", "provenance.intoto.json", "sbom.spdx.json"}
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split("  ", 1)
        sums[path] = digest
    return {path: digest for path, digest in sums.items() if path not in docs}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB ext4 mounted for the test (unmounted and detached afterwards)."""
    why = unavailable()
    if why:
        pytest.skip(why)
    with loop_ext4(tmp_path / "disk.img", tmp_path / "mnt", mib=32) as mnt:
        yield mnt


def _disk_graph(counter: Path, where: str) -> testgraphs.Spec:
    return {"diskfull": [
        {"name": "small", "stage": "slow-test",
         "options": {"counter": str(counter), "seconds": 0, "payload_kib": 8}},
        {"name": "fill", "stage": "fill-test", "inputs": {"after": "small"},  # in turn
         "options": {"counter": str(counter), "mib": 12, "where": where}}]}


@pytest.mark.root
@pytest.mark.parametrize("where", ["out", "work", "command"])
def test_a_full_disk_fails_the_node_clearly_and_the_cache_stays_usable(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], where: str) -> None:
    """The cache (XENFORGE_CACHE_DIR) on a disk with 8 MiB free; a node writes 12 MiB into
    its output (the cache's tmp/) or its work dir, itself or by a command: exit 1, an error
    that says the disk is full and where, no traceback; no half object, the node that fit
    is kept, the failed node's space is given back; with the space freed the same build
    succeeds with the same artifacts as a build on a roomy disk."""
    counter = tmp_path / "runs"
    _install_test_graphs(monkeypatch, _disk_graph(counter, where))
    recipe = testgraphs.write_recipe(tmp_path / "recipes", "diskfull")
    argv = ["build", str(recipe), "--plain"]

    # what the build gives on a disk with room
    assert cli.main(["--cache-dir", str(tmp_path / "roomy"), *argv,
                     "-o", str(tmp_path / "ref")]) == 0
    want = _sums(tmp_path / "ref" / "diskfull")
    assert sorted(want) == ["fill/fill.bin", "small/payload.bin"]

    cache_dir = small_disk / "cache"
    monkeypatch.setenv("XENFORGE_CACHE_DIR", str(cache_dir))
    Cache(cache_dir)
    ballast = fill(small_disk, leave=8 * MIB)
    capsys.readouterr()
    out = tmp_path / "out"
    assert cli.main([*argv, "-o", str(out)]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "internal error" not in text, text
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err
    (error,) = errors
    if where == "command":  # dd's own words, and what xenforge makes of them
        assert "dd: error writing" in captured.err
        assert "No space left on device" in captured.err
        (hint,) = [ln for ln in captured.err.splitlines() if ln.startswith("  hint: ")]
        error = hint
        assert hint.startswith("  hint: the disk is full: "), hint
    else:
        assert error.startswith("error: stage fill: the disk is full (No space left on "
                                "device)"), error
    assert f"{small_disk} has " in error, error  # which filesystem, and its room
    assert f"the cache {cache_dir}: tmp/, work/" in error, error
    assert not (out / "diskfull").exists()

    cache = Cache(cache_dir)
    assert list(cache.work_dir.iterdir()) == []
    assert free_bytes(small_disk) > 7 * MIB  # what the failed node wrote is gone
    assert cli.main(["cache", "ls"]) == 0
    listed = capsys.readouterr().out.split()
    assert "small" in listed and "fill" not in listed
    _objects_ok(cache)

    ballast.unlink()
    assert cli.main([*argv, "-o", str(out)]) == 0, capsys.readouterr().err
    assert "diskfull: 1 built, 1 cached" in capsys.readouterr().out
    assert _sums(out / "diskfull") == want
    assert counter.read_text().splitlines().count("fill") == 3  # roomy, full, freed
    _objects_ok(cache)
    assert list(cache.work_dir.iterdir()) == []
    assert free_bytes(small_disk) > 8 * MIB


@pytest.mark.root
def test_a_download_onto_a_full_disk_is_no_network_fault(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A url source of 3 MiB, its download store (the cache's scratch/) on a disk with
    1 MiB free: the node fails at once saying the disk is full (not retried as a lost
    connection), leaves no partial download, and builds once there is room."""
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    name = "big.tar.gz"
    server = BadServer({name: source_tarball(fx / "src" / "linux-mini", "big", 3 << 10)}, {})
    try:
        line = fx / "kernel_patches" / "mini" / "line.yaml"
        line.write_text(line.read_text().replace(
            "source:\n  path: ../../src/linux-mini\n",
            f"source:\n  url: {server.url(name)}\n  sha256: {server.sha256(name)}\n"))
        cache_dir = small_disk / "cache"
        Cache(cache_dir)
        ballast = fill(small_disk, leave=1 * MIB)
        argv = ["--cache-dir", str(cache_dir), "build", str(fx / "kernel.yaml"), "--target",
                "tree:mini", "-o", str(tmp_path / "out"), "--plain"]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err, err
        (error,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert error.startswith("error: stage source:mini: the disk is full (No space left "
                                "on device"), error
        assert f"{small_disk} has " in error and "scratch/" in error, error
        assert server.hits == {name: 1}  # a full disk is not retried like a network fault
        downloads = cache_dir / "scratch" / "downloads"
        assert _files(downloads) == []  # no partial file for a later run to trust
        _objects_ok(cache_dir)

        ballast.unlink()
        assert cli.main(argv) == 0, capsys.readouterr().err
        assert server.hits == {name: 2}
        graph = plan(load_recipe(fx / "kernel.yaml"))
        src = Cache(cache_dir).out(graph.nodes["source:mini"].id)
        assert sha256_file(src / name) == server.sha256(name)
        _objects_ok(Cache(cache_dir))
    finally:
        server.stop()


@pytest.mark.root
@pytest.mark.parametrize("logs", ["fresh", "made", "kept"])
def test_a_build_that_starts_on_a_full_disk_says_so(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], logs: str) -> None:
    """Not a byte free before the build starts, in a fresh cache (no room for its dirs),
    one without a state dir (no room for it) or one whose log folder exists (no room for
    a node's log): exit 1 with an error
    naming the full disk, no traceback, no stage run, nothing half-made; with room again
    the same build succeeds."""
    counter = tmp_path / "runs"
    _install_test_graphs(monkeypatch, _disk_graph(counter, "out"))
    recipe = testgraphs.write_recipe(tmp_path / "recipes", "diskfull")
    cache_dir = small_disk / "cache"
    argv = ["--cache-dir", str(cache_dir), "build", str(recipe), "--plain",
            "-o", str(tmp_path / "out")]
    if logs == "made":
        Cache(cache_dir)
    if logs == "kept":
        (Cache(cache_dir).state.logs("diskfull") / "build.log").write_text("a build before\n")
    ballast = fill(small_disk, leave=0)
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "internal error" not in text, text
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    assert errors, captured.err
    for e in errors:
        assert re.match(r"error: (stage \S+: )?the disk is full \(No space left on device", e), e
        assert f"{small_disk} has 0 B free" in e, e
    assert not counter.exists()  # no stage ran
    _objects_ok(cache_dir)

    ballast.unlink()
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "diskfull: 2 built, 0 cached" in capsys.readouterr().out
    _objects_ok(Cache(cache_dir))



@pytest.mark.root
def test_small_writes_on_a_full_disk_leave_no_temp_files(small_disk: Path) -> None:
    """A ref or an atomic file that cannot be written fails with the OSError and leaves
    no half-written temp file behind (refs/ is read by gc and `plan`, the store by fetch)."""
    cache = Cache(small_disk / "cache")
    (cache.refs_dir / "r").mkdir()
    store = small_disk / "cache" / "scratch" / "downloads" / "index"
    store.mkdir(parents=True)
    ballast = fill(small_disk, leave=0)
    with pytest.raises(OSError) as exc:
        cache.write_ref("r", "node", {"id": "a" * 64, "key": {"big": "x" * 10000}})
    assert exc.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        write_json_atomic(store / "pkg.json", {"big": "x" * 10000})
    assert _files(cache.refs_dir) == [] and _files(store) == []
    ballast.unlink()
    cache.write_ref("r", "node", {"id": "a" * 64, "key": {}})
    assert cache.read_ref("r", "node") == {"id": "a" * 64, "key": {}}


# -- a byte flipped in a cached object --------------------------------------------------------

def test_a_matrix_build_exports_each_recipe_whose_node_another_recipe_renamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`xenforge build A B` where both recipes have a node `base` that differs: the matrix
    names B's `B/base`; each recipe's export (its SBOM and provenance follow the inputs)
    still works under the recipe's own names (it failed with KeyError 'B/base')."""
    counter = tmp_path / "runs"

    def nodes(kib: int) -> list[dict[str, object]]:
        opts = {"counter": str(counter), "seconds": 0.01}
        return [{"name": "base", "stage": "slow-test", "options": {**opts, "payload_kib": kib}},
                {"name": "top", "stage": "slow-test", "inputs": {"base": "base"},
                 "options": {**opts, "payload_kib": 4}}]

    _install_test_graphs(monkeypatch, {"ra": nodes(8), "rb": nodes(16)})
    recipes = [testgraphs.write_recipe(tmp_path / "recipes", n) for n in ("ra", "rb")]
    out = tmp_path / "out"
    assert cli.main(["--cache-dir", str(tmp_path / "cache"), "build", *map(str, recipes),
                     "-o", str(out), "--quiet"]) == 0
    for name, kib in (("ra", 8), ("rb", 16)):
        prov = json.loads((out / name / "provenance.intoto.json").read_text())
        text = json.dumps(prov)
        assert "rb/base" not in text
        assert (out / name / "base" / "payload.bin").stat().st_size == kib * 1024

def test_a_cached_object_nothing_reads_is_not_opened_until_a_build_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """base -> mid -> top, mid not exported. With everything cached a build reads only top
    (its export): a byte flipped in mid goes unnoticed and nothing is rebuilt (checking a
    kernel tree's files nobody reads made every no-op build seconds slower). Once top must
    be rebuilt (its options change) the build reads mid: then the flip is found, mid rebuilt
    from base (read and checked too), and top built from the good mid."""
    counter = tmp_path / "runs"

    def spec(top_seconds: float) -> testgraphs.Spec:
        opts = {"counter": str(counter), "payload_kib": 16}
        return {"lazy": [
            {"name": "base", "stage": "slow-test", "options": {**opts, "seconds": 0.01},
             "export": False},
            {"name": "mid", "stage": "slow-test", "inputs": {"base": "base"},
             "options": {**opts, "seconds": 0.02}, "export": False},
            {"name": "top", "stage": "slow-test", "inputs": {"mid": "mid"},
             "options": {**opts, "seconds": top_seconds}}]}

    _install_test_graphs(monkeypatch, spec(0.03))
    recipe = testgraphs.write_recipe(tmp_path / "recipes", "lazy")
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--cache-dir", str(cache_dir), "build", str(recipe), "-o", str(out), "--plain"]
    assert cli.main(argv) == 0
    graph = xenforge.plan.plan(load_recipe(recipe))
    _flip_byte(Cache(cache_dir).out(graph.nodes["mid"].id) / "payload.bin", 100)
    capsys.readouterr()
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert "lazy: 0 built, 3 cached" in shown, shown
    assert "corrupt" not in shown, shown

    _install_test_graphs(monkeypatch, spec(0.04))  # top changes: it reads mid now
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"corrupt mid  {graph.nodes['mid'].id[:12]}: payload.bin: its "
                     r"content changed \(sha256\); rebuilding it", shown), shown
    assert "lazy: 2 built, 1 cached" in shown, shown
    runs = counter.read_text().splitlines()
    assert [r.split()[1] for r in runs] == ["base", "mid", "top", "mid", "top"]
    _objects_ok(Cache(cache_dir))


def test_a_flipped_byte_in_a_cached_object_is_found_and_the_node_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`xenforge build` twice; between them one byte of a cached object's file is flipped
    in place (same size): the second build finds it, rebuilds that node only (what
    consumes it is cached under its own id) and exports the very same artifacts."""
    counter = tmp_path / "runs"
    _install_test_graphs(monkeypatch, {"flip": [
        {"name": "base", "stage": "slow-test",
         "options": {"counter": str(counter), "seconds": 0.05, "payload_kib": 64}},
        {"name": "top", "stage": "slow-test", "inputs": {"base": "base"},
         "options": {"counter": str(counter), "seconds": 0.05, "payload_kib": 8}}]})
    recipe = testgraphs.write_recipe(tmp_path / "recipes", "flip")
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--cache-dir", str(cache_dir), "build", str(recipe), "-o", str(out), "--plain"]
    assert cli.main(argv) == 0
    want = _sums(out / "flip")
    assert sorted(want) == ["base/payload.bin", "top/payload.bin"]

    graph = xenforge.plan.plan(load_recipe(recipe))  # the test graph, with its ids
    _flip_byte(Cache(cache_dir).out(graph.nodes["base"].id) / "payload.bin", 1000)
    capsys.readouterr()
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert "flip: 1 built, 1 cached" in shown, shown
    assert re.search(rf"corrupt base  {graph.nodes['base'].id[:12]}: payload.bin: its "
                     r"content changed \(sha256\); rebuilding it", shown), shown
    runs = counter.read_text().splitlines()
    assert [r.split()[1] for r in runs] == ["base", "top", "base"]
    assert _sums(out / "flip") == want
    assert sha256_file(out / "flip" / "base" / "payload.bin") == want["base/payload.bin"]
    _objects_ok(Cache(cache_dir))
