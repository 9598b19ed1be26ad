"""End to end through the engine with the real `source` and `tree` stages: builds, the cache,
exported artifacts, and a build killed with SIGKILL in the middle of a node."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xf_test_stages

from xenforge import stages as stage_registry
from xenforge.build.executor import Executor
from xenforge.cache import Cache
from xenforge.cli import app as cli
from xenforge.cli.progress import Progress
from xenforge.core.hashing import sha256_file
from xenforge.export.artifacts import export
from xenforge.plan import plan
from xenforge.plan.graph import Graph, Node, compute_ids
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
XENFORGE = REPO / ".venv" / "bin" / "xenforge"


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    dest = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dest)
    return dest


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # cli.main installs its own
    yield
    signal.signal(signal.SIGTERM, handler)


def _build_sections(build_log: Path, recipe: str) -> list[str]:
    """The build log, one string per `xenforge build` run."""
    text = build_log.read_text()
    parts = text.split(f"] build {recipe}: ")
    return parts[1:]


def test_second_build_runs_no_node(fx: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--cache-dir", str(cache_dir), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(out), "--plain"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "mini-kernel: 2 built, 0 cached" in first

    graph = plan(load_recipe(fx / "kernel.yaml"))
    cache = Cache(cache_dir)
    tree = cache.out(graph.nodes["tree:mini"].id) / "tree"
    kconfig = (tree / "init" / "Kconfig").read_text()
    assert "config XENFORGE_TEST" in kconfig  # the series was applied
    assert (tree / "Makefile").read_text() == (fx / "src/linux-mini/Makefile").read_text()
    assert not (tree / "line.yaml").exists()
    src = json.loads((cache.out(graph.nodes["source:mini"].id) / "source.json").read_text())
    assert src["kind"] == "path" and src["primary"] == "linux-mini"

    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert "mini-kernel: 0 built, 2 cached" in second
    build_log = cache_dir / "state" / "logs" / "mini-kernel" / "build.log"
    runs = _build_sections(build_log, "mini-kernel")
    assert len(runs) == 2
    assert "start  source:mini" in runs[0] and "built  tree:mini" in runs[0]
    for name in ("source:mini", "tree:mini"):
        assert f"cached {name}  {graph.nodes[name].id[:12]}" in runs[1]
    assert "start " not in runs[1] and "built " not in runs[1]

    manifest = json.loads((out / "mini-kernel" / "manifest.json").read_text())
    assert {n["name"]: (n["id"], n["status"]) for n in manifest["nodes"]} == {
        "source:mini": (graph.nodes["source:mini"].id, "cached"),
        "tree:mini": (graph.nodes["tree:mini"].id, "cached")}
    listed = [ln.split("  ")[1] for ln in (out / "mini-kernel" / "SHA256SUMS").read_text()
              .splitlines()]  # no artifacts declared: only the export's own documents
    assert listed == ["manifest.json", "provenance.intoto.json", "sbom.spdx.json"]


def test_unknown_target_is_an_input_error(fx: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--cache-dir", str(tmp_path / "c"), "build", str(fx / "kernel.yaml"),
                     "--target", "tree:nope", "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no node tree:nope" in err and "source:mini, tree:mini, buildroot:" in err


def test_a_nodes_manifest_records_the_cpu_time_of_its_sandboxed_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted by a cgroup of the node's own: the burn runs in a bubblewrap PID namespace
    whose CPU time no rusage of xenforge's children ever sees."""
    from xenforge.core import cpuacct

    with cpuacct.group("probe") as probe:
        if probe is None:
            pytest.skip("no writable cgroup cpuacct/cpu.stat hierarchy: nothing counts CPU")
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap (bubblewrap) is not installed")
    monkeypatch.setitem(stage_registry.REGISTRY, "burn-test", xf_test_stages.TEST_STAGES[
        "burn-test"])
    g = Graph(recipe="burn")
    g.add(Node(name="burn", stage="burn-test", options={"loops": 300000}))
    g.add(Node(name="idle", stage="burn-test", options={"loops": 1}))
    compute_ids(g)
    cache = Cache(tmp_path / "cache")
    started = time.process_time()
    results = Executor(g, cache, Progress(quiet=True), jobs=1).run()
    assert {r.status for r in results.values()} == {"built"}
    burn = cache.store.read_manifest(g.nodes["burn"].id)
    idle = cache.store.read_manifest(g.nodes["idle"].id)
    assert burn is not None and idle is not None
    assert burn["cpu_seconds"] >= 0.1 > idle["cpu_seconds"] >= 0, (burn, idle)
    assert burn["cpu_seconds"] > time.process_time() - started  # not xenforge's own
    assert not [p for p in probe.path.parent.iterdir() if p.name.startswith(
        f"xenforge-{os.getpid()}-")], "a node's cgroup was left behind"


def test_exported_artifacts_match_sha256sums_and_manifest(
        fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    full = plan(load_recipe(fx / "kernel.yaml"))
    graph = full.only(["tree:mini"])
    graph.add(Node(name="pack", stage="pack-test", inputs={"tree": "tree:mini"}))
    compute_ids(graph)
    assert graph.nodes["tree:mini"].id == full.nodes["tree:mini"].id
    cache = Cache(tmp_path / "cache")
    dest = tmp_path / "out" / graph.recipe
    for round_ in range(2):
        results = Executor(graph, cache, Progress(quiet=True), jobs=2).run()
        assert {r.status for r in results.values()} == {"built" if round_ == 0 else "cached"}
        artifacts = export(graph, results, cache, dest)
        assert sorted(a.path.as_posix() for a in artifacts) == ["pack/files.txt",
                                                                "pack/tree.tar"]
        sums = {}
        for line in (dest / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split("  ", 1)
            sums[name] = digest
        docs = {"manifest.json", "provenance.intoto.json", "sbom.spdx.json"}
        assert set(sums) - docs == {a.path.as_posix() for a in artifacts}
        assert sums == {name: sha256_file(dest / name) for name in sums}
        sums = {name: digest for name, digest in sums.items() if name not in docs}
        manifest = json.loads((dest / "manifest.json").read_text())
        assert manifest["recipe"] == "mini-kernel"
        assert {a["path"]: a["sha256"] for a in manifest["artifacts"]} == sums
        assert {a["path"]: a["size"] for a in manifest["artifacts"]} == \
            {p: (dest / p).stat().st_size for p in sums}
        assert [n["name"] for n in manifest["nodes"]] == ["source:mini", "tree:mini", "pack"]
        assert sorted(p.name for p in dest.iterdir()) == [
            "SHA256SUMS", "manifest.json", "pack", "provenance.intoto.json", "sbom.spdx.json"]
    listing = (dest / "pack" / "files.txt").read_text().split()
    assert listing == ["Makefile", "init/Kconfig"]
    with tarfile.open(dest / "pack" / "tree.tar") as tar:
        member = tar.extractfile("./init/Kconfig")
        assert member is not None and b"XENFORGE_TEST" in member.read()
    assert not list(dest.parent.glob(".*"))  # no staging/old export dirs left


# -- killed in the middle of a node ----------------------------------------------------------

def _tarball(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="linux-mini")
        pad = tarfile.TarInfo("linux-mini/padding.bin")
        data = os.urandom(1 << 20)  # incompressible: the transfer takes several chunks
        pad.size = len(data)
        tar.addfile(pad, io.BytesIO(data))
    return buf.getvalue()


class _Server:
    """Serves one file; while ``stall`` is set, sends half of it and blocks until
    ``release`` (then sends the rest, if the client is still there)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.stall = threading.Event()
        self.half_sent = threading.Event()
        self.release = threading.Event()
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                try:
                    if server.stall.is_set():
                        self.wfile.write(server.payload[: len(server.payload) // 2])
                        self.wfile.flush()
                        server.half_sent.set()
                        server.release.wait(60)
                        self.wfile.write(server.payload[len(server.payload) // 2:])
                        return
                    self.wfile.write(server.payload)
                except OSError:
                    pass  # the client was killed

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sigkill_in_the_middle_of_a_node_leaves_nothing_that_is_reused(fx: Path,
                                                                       tmp_path: Path) -> None:
    if not XENFORGE.exists():
        pytest.skip(f"{XENFORGE} is missing: run ci/setup-host.sh")
    payload = _tarball(fx / "src" / "linux-mini")
    sha = hashlib.sha256(payload).hexdigest()
    server = _Server(payload)
    try:
        line = fx / "kernel_patches" / "mini" / "line.yaml"
        line.write_text(line.read_text().replace(
            "source:\n  path: ../../src/linux-mini\n",
            f"source:\n  url: http://127.0.0.1:{server.port}/linux-mini.tar.gz\n"
            f"  sha256: {sha}\n"))
        recipe = fx / "kernel.yaml"
        graph = plan(load_recipe(recipe))
        src_id, tree_id = graph.nodes["source:mini"].id, graph.nodes["tree:mini"].id
        cache_dir, out = tmp_path / "cache", tmp_path / "out"
        argv = [str(XENFORGE), "--cache-dir", str(cache_dir), "build", str(recipe),
                "--target", "tree:mini", "-o", str(out), "--plain"]

        server.stall.set()
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            assert server.half_sent.wait(60), "the build never started downloading"
            staging = list((cache_dir / "tmp").glob(f"{src_id}.*"))
            assert len(staging) == 1, "the source node is not running"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        cache = Cache(cache_dir)
        assert not cache.has(src_id) and not cache.object_dir(src_id).exists()
        assert not cache.has(tree_id)
        deadline = time.monotonic() + 30  # what the killed run left: never read; its
        while staging[0].exists() and time.monotonic() < deadline:  # watchdog deletes it
            time.sleep(0.1)
        assert not staging[0].exists(), "the killed build's watchdog left its staging dir"
        assert not (cache.scratch("downloads") / "sha256" / sha).exists()
        assert not (out / "mini-kernel").exists()

        server.stall.clear()
        server.release.set()
        rebuild = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120)
        assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
        assert "mini-kernel: 2 built, 0 cached" in rebuild.stdout
        assert server.requests == 2  # downloaded again, not taken from the killed run

        assert not staging[0].exists()
        assert list((cache_dir / "tmp").iterdir()) == []
        assert list((cache_dir / "work").iterdir()) == []
        fetched = cache.out(src_id) / "linux-mini.tar.gz"
        assert sha256_file(fetched) == sha
        assert sha256_file(cache.scratch("downloads") / "sha256" / sha) == sha
        tree = cache.out(tree_id) / "tree"
        assert (tree / "padding.bin").stat().st_size == 1 << 20
        assert "config XENFORGE_TEST" in (tree / "init" / "Kconfig").read_text()
        logs = cache_dir / "state" / "logs" / "mini-kernel"
        runs = _build_sections(logs / "build.log", "mini-kernel")
        assert "built  source:mini" in runs[-1] and "built  tree:mini" in runs[-1]
        node_log = (logs / "source-mini.log").read_text()
        assert "never built" in node_log
    finally:
        server.close()


def _waits_for_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked taking a file lock (a ``->`` line in /proc/locks)."""
    return any(line.split()[1:2] == ["->"] and str(pid) in line.split()
               for line in Path("/proc/locks").read_text().splitlines())


def test_a_build_waits_for_a_concurrent_build_of_the_same_node(fx: Path, tmp_path: Path
                                                               ) -> None:
    """Two `xenforge build` processes on one cache: the second waits on the node lock and
    reuses the first one's result instead of building it again."""
    if not XENFORGE.exists():
        pytest.skip(f"{XENFORGE} is missing: run ci/setup-host.sh")
    payload = _tarball(fx / "src" / "linux-mini")
    sha = hashlib.sha256(payload).hexdigest()
    server = _Server(payload)
    try:
        line = fx / "kernel_patches" / "mini" / "line.yaml"
        line.write_text(line.read_text().replace(
            "source:\n  path: ../../src/linux-mini\n",
            f"source:\n  url: http://127.0.0.1:{server.port}/linux-mini.tar.gz\n"
            f"  sha256: {sha}\n"))
        argv = [str(XENFORGE), "--cache-dir", str(tmp_path / "cache"), "build",
                str(fx / "kernel.yaml"), "--target", "tree:mini", "--plain"]
        server.stall.set()
        first = subprocess.Popen([*argv, "-o", str(tmp_path / "out1")], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert server.half_sent.wait(60)
        second = subprocess.Popen([*argv, "-o", str(tmp_path / "out2")], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # the second one waits for the lock of source:mini (however long it takes to start)
        deadline = time.monotonic() + 120
        while not _waits_for_a_lock(second.pid):
            assert second.poll() is None, second.communicate()[0]
            assert time.monotonic() < deadline, "the second build never waited for the lock"
            time.sleep(0.05)
        server.stall.clear()
        server.release.set()
        out1, _ = first.communicate(timeout=120)
        out2, _ = second.communicate(timeout=120)
        assert first.returncode == 0, out1
        assert second.returncode == 0, out2
        counts = [re.search(r"mini-kernel: (\d+) built, (\d+) cached", o) for o in (out1, out2)]
        assert all(counts), out1 + out2
        built = [int(m.group(1)) for m in counts if m]
        assert sum(built) == 2 and built[0] >= 1  # each node once; the first got the source
        assert "source:mini" in out2 and "built by another run" in out2
        assert server.requests == 1
    finally:
        server.close()


# -- commands a killed build left running ---------------------------------------------------

HANG_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import xf_test_stages
from xenforge import stages
from xenforge.build.executor import Executor
from xenforge.cache import Cache
from xenforge.plan.graph import Graph, Node, compute_ids
from xenforge.cli.progress import Progress
stages.REGISTRY.update(xf_test_stages.TEST_STAGES)
g = Graph(recipe="hang")
g.add(Node(name=sys.argv[4], stage="hang-test", options={"pidfile": sys.argv[3]}))
compute_ids(g)
Executor(g, Cache(Path(sys.argv[2])), Progress(quiet=True), jobs=1).run()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _start_hanging_build(cache_dir: Path, pidfile: Path, node: str) -> tuple[
        subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-c", HANG_SCRIPT,
                             str(Path(__file__).parent), str(cache_dir), str(pidfile), node],
                            cwd=REPO)
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc, int(pidfile.read_text())


def _watchdog_of(pid: int) -> int:
    """The watchdog (xenforge.build.reaper) that the build process ``pid`` started."""
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"xenforge.build.reaper" in cmdline:
            return int(entry.name)
    raise AssertionError(f"build {pid} has no watchdog")


def test_a_killed_builds_watchdog_stops_its_commands_at_once(tmp_path: Path) -> None:
    """SIGKILL runs none of xenforge's clean-up: its watchdog stops the commands it left
    and deletes the node's staging and work dirs at once, without waiting for a next
    build; a live build's command on the same cache is left alone (the shell and its
    sleep are the killed build's two processes)."""
    cache_dir = tmp_path / "cache"
    killed, orphan = _start_hanging_build(cache_dir, tmp_path / "orphan.pid", "killed")
    live, live_child = _start_hanging_build(cache_dir, tmp_path / "live.pid", "live")
    try:
        watchdog = _watchdog_of(killed.pid)
        assert list((cache_dir / "work").iterdir()) and list((cache_dir / "tmp").iterdir())
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(30)
        deadline = time.monotonic() + 30
        while (_alive(orphan) or _alive(watchdog)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan), "the killed build's command still runs"
        assert not _alive(watchdog), "the watchdog did not finish"
        assert _alive(live_child), "a running build's command was killed"
        live_id = [p.name for p in (cache_dir / "work").iterdir()]
        assert len(live_id) == 1 and [p.name.split(".")[0] for p in
                                      (cache_dir / "tmp").iterdir()] == live_id
        log = (cache_dir / "state" / "logs" / "hang" / "build.log").read_text()
        assert "the build died; stopped 2 process(es) it left running, deleted 2 " \
            "staging/work dir(s)" in log, log
    finally:
        for p in (killed, live):
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in (orphan, live_child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_commands_a_killed_build_left_running_are_stopped_by_the_next_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed xenforge cannot stop its commands (they run in their own process group):
    the next build on the cache does, before they write into a rebuilt node's dirs. Live
    builds' commands and other caches' are left alone."""
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    cache_dir = tmp_path / "cache"
    killed, orphan = _start_hanging_build(cache_dir, tmp_path / "orphan.pid", "killed")
    live, live_child = _start_hanging_build(cache_dir, tmp_path / "live.pid", "live")
    other, other_child = _start_hanging_build(tmp_path / "other-cache",
                                              tmp_path / "other.pid", "killed")
    try:
        # everything the build started is killed at once (a cgroup kill), its watchdog too
        os.kill(_watchdog_of(killed.pid), signal.SIGKILL)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(30)
        assert _alive(orphan)  # nothing stopped it so far

        g = Graph(recipe="next")
        g.add(Node(name="quick", stage="slow-test",
                   options={"counter": str(tmp_path / "runs"), "seconds": 0}))
        compute_ids(g)
        results = Executor(g, Cache(cache_dir), Progress(quiet=True), jobs=1).run()
        assert results["quick"].status == "built"

        deadline = time.monotonic() + 10
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan), "the killed build's command still runs"
        assert _alive(live_child), "a running build's command was killed"
        assert _alive(other_child), "another cache's build was touched"
    finally:
        for p in (killed, live, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in (orphan, live_child, other_child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- failures are reported for people --------------------------------------------------------

def test_a_failing_node_exits_1_naming_the_stage_and_log(fx: Path, tmp_path: Path) -> None:
    if not XENFORGE.exists():
        pytest.skip(f"{XENFORGE} is missing: run ci/setup-host.sh")
    patch = fx / "kernel_patches" / "mini" / "0001-add-option.patch"
    patch.write_text(patch.read_text().replace(' \tdefault ""\n+', ' \tdefault "x"\n+'))
    cache_dir = tmp_path / "cache"
    proc = subprocess.run([str(XENFORGE), "--cache-dir", str(cache_dir), "build",
                           str(fx / "kernel.yaml"), "--target", "tree:mini", "-o",
                           str(tmp_path / "out"), "--plain"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    log = cache_dir / "state" / "logs" / "mini-kernel" / "tree-mini.log"
    assert "error: stage tree:mini:" in proc.stderr
    assert "0001-add-option.patch does not apply" in proc.stderr
    assert f"full log: {log}" in proc.stderr
    assert log.is_file()
    graph = plan(load_recipe(fx / "kernel.yaml"))
    cache = Cache(cache_dir)
    assert cache.has(graph.nodes["source:mini"].id)  # what succeeded is kept
    assert not cache.has(graph.nodes["tree:mini"].id)
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not (tmp_path / "out" / "mini-kernel").exists()


def test_json_progress_and_debug_logging(fx: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--progress=json: one JSON object per line (node events, artifacts, a summary) for CI
    front-ends; --debug: every command the build runs, as it starts."""
    argv = ["--debug", "--cache-dir", str(tmp_path / "cache"), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(tmp_path / "out"), "--progress=json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    kinds = [(e["event"], e.get("node")) for e in events if e["event"] != "message"]
    assert ("started", "source:mini") in kinds and ("finished", "tree:mini") in kinds
    finished = next(e for e in events if e["event"] == "finished" and e["node"] == "tree:mini")
    assert finished["status"] == "built" and finished["seconds"] >= 0
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] and summary["built"] == 2
    assert "DEBUG xenforge.run: $ patch --batch" in captured.err
    assert cli.main(argv[1:]) == 0  # again: cached, and quiet about commands
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["node"] for e in again if e["event"] == "cached"} == {"source:mini", "tree:mini"}


def test_an_export_never_replaces_a_folder_that_is_not_one(fx: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    """-o home with a recipe named like a user's folder: exit 2 before building, and the
    folder keeps every file; a previous export of xenforge is replaced."""
    out = tmp_path / "home"
    mine = out / "mini-kernel"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    argv = ["--cache-dir", str(tmp_path / "cache"), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(out), "--plain"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds files that are not an export of xenforge" in err and "Traceback" not in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "cache" / "objects").exists() or \
        not list((tmp_path / "cache" / "objects").glob("*/*"))  # nothing was built
    (mine / "thesis.tex").rename(tmp_path / "thesis.tex")
    assert cli.main(argv) == 0  # an empty folder is fine
    assert cli.main(argv) == 0  # and so is our own export
    assert json.loads((mine / "manifest.json").read_text())["generator"] == "xenforge"
    (tmp_path / "file").write_text("x")
    argv[argv.index(str(out))] = str(tmp_path / "file" / "sub")
    assert cli.main(argv) == 2
    assert "not a writable folder" in capsys.readouterr().err


def test_a_damaged_object_whose_inputs_are_gone_is_rebuilt_from_them(
        fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tree is cached, its source was collected; then a file of the tree is changed
    (an export is a hard link into the cache): the build finds it before planning, so the
    source is planned again and the tree rebuilt, not reported as an internal error."""
    cache_dir = tmp_path / "cache"
    argv = ["--cache-dir", str(cache_dir), "build", str(fx / "kernel.yaml"), "--target",
            "tree:mini", "-o", str(tmp_path / "out"), "--plain"]
    assert cli.main(argv) == 0
    graph = plan(load_recipe(fx / "kernel.yaml"))
    cache = Cache(cache_dir)
    with cache.lock(graph.nodes["source:mini"].id):
        cache.discard(graph.nodes["source:mini"].id)
    makefile = cache.out(graph.nodes["tree:mini"].id) / "tree" / "Makefile"
    makefile.write_text(makefile.read_text() + "# edited\n")
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mini-kernel: 2 built, 0 cached" in out, out
    assert "# edited" not in makefile.read_text()
