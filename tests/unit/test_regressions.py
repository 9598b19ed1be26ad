"""Regression tests of the adversarial run's eight defect classes, one test per defect or
sub-case, named after it: each reproduces what was reported and asserts the behaviour - bad
input is exit 2 with the file, the line or field and the fix; nothing is lost, hangs, or is
stored under a wrong id. What other modules already assert as reported is not repeated:

1. an input edited during a build: test_cache.py::
   test_an_input_edited_during_a_build_never_poisons_the_cache (the engine's two checks);
   here the reported case, a patch edited while the url source downloads
2. a user's folder of the recipe's name under ``-o``: test_build.py::
   test_an_export_never_replaces_a_folder_that_is_not_one; here ``-o /proc`` and a file
3. damaged objects: test_cache.py::test_a_tampered_object_is_found_and_rebuilt_never_used,
   ::test_an_emptied_or_wrong_manifest_is_no_object,
   ::test_gc_takes_an_object_dir_without_a_valid_manifest; here wrong JSON shapes and
   ``xenforge cache verify``
4. extends: test_validate.py::
   test_extends_reads_each_file_once_and_refuses_duplicates_and_depth
7. downloads without a deadline: test_sources.py::
   test_a_stalled_download_times_out_is_retried_then_reported,
   ::test_a_dripping_download_hits_the_overall_timeout,
   ::test_an_interrupt_stops_a_stalled_download_at_once; test_faults.py::
   test_download_faults_fail_the_build_clearly_and_store_nothing
8. element and package names: test_validate.py::test_names_that_reach_an_argv_are_checked
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xf_test_stages

from xenforge import stages as stage_registry
from xenforge.build.executor import Executor, NodeResult
from xenforge.cache import Cache
from xenforge.cli import app as cli
from xenforge.cli.progress import Progress
from xenforge.lib.xl import Guest, guest_config
from xenforge.plan import plan
from xenforge.plan.graph import Graph, Node, compute_ids
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
MINI_LINE = "kernel_patches/mini"


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    """A private copy of the fixtures (tests/recipes/fixtures)."""
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURES, dest, symlinks=True)
    return dest


@pytest.fixture(autouse=True)
def _test_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # cli.main installs its own
    yield
    signal.signal(signal.SIGTERM, handler)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    """``xenforge ARGV`` in this process: its exit code and what it printed."""
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


def refused(capsys: pytest.CaptureFixture[str], recipe: Path, where: str, *words: str,
            hint: str = "") -> str:
    """``xenforge validate RECIPE`` is exit 2 with a problem at ``where`` (``file:line:
    field`` or a part of it) that says ``words`` and whose hint holds ``hint``."""
    code, text = run(capsys, "validate", recipe)
    assert code == 2, text
    lines = text.splitlines()
    hits = [i for i, ln in enumerate(lines) if where in ln]
    assert hits, f"no problem at {where!r}:\n{text}"
    line = lines[hits[0]]
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    if hint:
        follow = lines[hits[0] + 1] if hits[0] + 1 < len(lines) else ""
        assert follow.strip().startswith("hint:") and hint in follow, text
    return text


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def kernel_recipe(folder: Path, kernel: str, name: str = "r") -> Path:
    """A recipe of one kernel of the fixtures' mini line with ``kernel``'s extra settings
    (a YAML flow mapping's inside)."""
    return write(folder / f"{name}.yaml", f"schema: 1\nkernels:\n  dom0: {{line: "
                 f"{folder / MINI_LINE}, {kernel}}}\n")


# -- 1. an input edited during a build -------------------------------------------------------

def _tarball(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="linux-mini")
    return buf.getvalue()


class _SlowServer:
    """Serves one file: half of it, then the rest once ``release`` is set."""

    def __init__(self, payload: bytes) -> None:
        self.half_sent = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    server.half_sent.set()
                    server.release.wait(30)
                    self.wfile.write(payload[len(payload) // 2:])
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_defect1_a_patch_edited_while_the_source_downloads_never_poisons_the_cache(
        fx: Path, tmp_path: Path) -> None:
    """The reported case: a kernel line with a patch series and a slow url source; the
    patch is edited while the source downloads. The tree fails (its input changed after
    planning), nothing is stored under the original patch's id, and the edited series
    builds under an id of its own."""
    payload = _tarball(fx / "src" / "linux-mini")
    server = _SlowServer(payload)
    try:
        line = fx / MINI_LINE / "line.yaml"
        line.write_text(line.read_text().replace(
            "source:\n  path: ../../src/linux-mini\n",
            f"source:\n  url: http://127.0.0.1:{server.port}/linux-mini.tar.gz\n"
            f"  sha256: {hashlib.sha256(payload).hexdigest()}\n"))
        patch = fx / MINI_LINE / "0001-add-option.patch"
        graph = plan(load_recipe(fx / "kernel.yaml")).only(["tree:mini"])
        tree_id = graph.nodes["tree:mini"].id
        cache = Cache(tmp_path / "cache")
        results: dict[str, NodeResult] = {}
        builder = threading.Thread(target=lambda: results.update(
            Executor(graph, cache, Progress(quiet=True), jobs=2).run()))
        builder.start()
        try:
            assert server.half_sent.wait(30), "the source never started downloading"
            patch.write_text(patch.read_text().replace("XENFORGE_TEST", "XENFORGE_EDITED"))
        finally:
            server.release.set()
            builder.join(60)
        src, tree = results["source:mini"], results["tree:mini"]
        assert src.status == "built" and tree.status == "failed" and tree.error is not None
        message = tree.error.render()
        assert "changed after the build was planned" in message, message
        assert str(fx / MINI_LINE) in message and "build again" in message
        assert not cache.has(tree_id) and not cache.object_dir(tree_id).exists()

        again = plan(load_recipe(fx / "kernel.yaml")).only(["tree:mini"])
        new_id = again.nodes["tree:mini"].id
        assert new_id != tree_id
        rebuilt = Executor(again, cache, Progress(quiet=True), jobs=2).run()
        assert rebuilt["tree:mini"].status == "built"
        kconfig = (cache.out(new_id) / "tree" / "init" / "Kconfig").read_text()
        assert "XENFORGE_EDITED" in kconfig and "XENFORGE_TEST" not in kconfig
        assert not cache.has(tree_id)
    finally:
        server.close()


# -- 2. an export never replaces what is not one ---------------------------------------------

@pytest.mark.parametrize("where", ["/proc", "file", "file/sub"])
def test_defect2_an_export_place_that_cannot_hold_one_is_refused_before_the_build(
        fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """``-o /proc`` (root may "write" there by access(2), but no folder can be made) and
    ``-o`` on a file: exit 2 naming the folder and the fix, before anything is built."""
    (tmp_path / "file").write_text("mine")
    out = where if where.startswith("/") else str(tmp_path / where)
    code, text = run(capsys, "--cache-dir", tmp_path / "cache", "build", fx / "kernel.yaml",
                     "--target", "tree:mini", "-o", out, "--plain")
    assert code == 2, text
    assert f"cannot write the export folder {out}/mini-kernel" in text
    assert "pass a writable -o/--out" in text
    assert not list((tmp_path / "cache" / "objects").glob("*/*"))  # nothing was built
    assert (tmp_path / "file").read_text() == "mine"


# -- 3. cached objects are verified -----------------------------------------------------------

def _two_nodes(tmp_path: Path) -> Graph:
    g = Graph(recipe="verify")
    g.add(Node(name="first", stage="slow-test",
               options={"counter": str(tmp_path / "runs"), "seconds": 0.01}))
    g.add(Node(name="after", stage="slow-test", inputs={"first": "first"},
               options={"counter": str(tmp_path / "runs"), "seconds": 0.01}))
    compute_ids(g)
    return g


def test_defect3_manifests_and_refs_of_the_wrong_shape_break_no_cache_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest or a ref of the wrong JSON shape: ``cache ls``, ``du`` and ``gc`` work
    (exit 0), such an object is no object (rebuilt, never trusted), gc takes it."""
    cache = Cache(tmp_path / "cache")
    g = _two_nodes(tmp_path)
    Executor(g, cache, Progress(quiet=True), jobs=1).run()
    first, after = g.nodes["first"].id, g.nodes["after"].id
    (cache.object_dir(first) / "manifest.json").write_text(
        json.dumps({"id": first, "stage": 5, "node": [1], "finished": "soon", "files": 7,
                    "records": "many"}))
    (cache.object_dir(after) / "manifest.json").write_text("[]")
    for bad in ("[]", '{"id": [1, 2]}', '"x"', "{", '{"id": {"a": 1}}'):
        write(cache.refs_dir / "verify" / f"n{len(bad)}.json", bad)
    (cache.refs_dir / "verify" / "folder.json").mkdir()
    for action in (["ls"], ["du"], ["gc", "--dry-run", "--older-than", "0"], ["gc"]):
        code, text = run(capsys, "--cache-dir", cache.root, "cache", *action)
        assert code == 0, text
    assert not cache.object_dir(after).exists()  # gc took the debris
    assert cache.verified(first), "a manifest whose file list is no list was trusted"
    res = Executor(_two_nodes(tmp_path), cache, Progress(quiet=True), jobs=1).run()
    assert res["first"].status == "built" and res["after"].status == "built"
    assert cache.verified(first) == [] and cache.verified(after) == []


def test_defect3_cache_verify_hashes_every_object_and_takes_out_a_damaged_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file replaced by other bytes of its size, its mtime restored, passes the cheap
    check; ``xenforge cache verify`` hashes in full, names the object and the file, takes
    the object out (exit 1), and the next build rebuilds it."""
    cache = Cache(tmp_path / "cache")
    g = _two_nodes(tmp_path)
    Executor(g, cache, Progress(quiet=True), jobs=1).run()
    payload = cache.out(g.nodes["first"].id) / "payload.bin"
    st = payload.stat()
    data = bytearray(payload.read_bytes())
    data[7] ^= 0xFF
    payload.write_bytes(bytes(data))
    os.utime(payload, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.verified(g.nodes["first"].id) == []  # the cheap check cannot see it
    code, text = run(capsys, "--cache-dir", cache.root, "cache", "verify")
    assert code == 1, text
    assert g.nodes["first"].id[:12] in text and "payload.bin" in text and "first" in text
    assert g.nodes["after"].id[:12] not in text
    assert not cache.has(g.nodes["first"].id) and cache.has(g.nodes["after"].id)
    code, text = run(capsys, "--cache-dir", cache.root, "cache", "verify")
    assert code == 0 and "1 object verified, 0 damaged" in text, text
    res = Executor(_two_nodes(tmp_path), cache, Progress(quiet=True), jobs=1).run()
    assert res["first"].status == "built" and res["after"].status == "cached"


# -- 4. exponential expansion -----------------------------------------------------------------

def test_defect4_extends_listing_one_file_four_times_per_level(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reported recipe: 11 levels, each extending the level below four times (4^11
    loads): each duplicate is a located problem, at once."""
    write(tmp_path / "s0.yaml", "schema: 1\n")
    for i in range(1, 12):
        below = f"s{i - 1}.yaml"
        write(tmp_path / f"s{i}.yaml", f"schema: 1\nextends: [{', '.join([below] * 4)}]\n")
    start = time.monotonic()
    text = refused(capsys, tmp_path / "s11.yaml", "s11.yaml:2: extends[1]",
                   "s10.yaml is listed twice in extends", hint="name each recipe once")
    assert time.monotonic() - start < 5
    assert "s1.yaml:2: extends[3]: s0.yaml is listed twice" in text


def test_defect4_extends_fanning_out_over_distinct_files_reads_each_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Four files per level, each extending all four of the level below (no file listed
    twice, 4^11 paths through the chains): each file is read and merged once."""
    for i in range(12):
        for c in "abcd":
            ext = "" if i == 0 else \
                f"extends: [{', '.join(f'{x}{i - 1}.yaml' for x in 'abcd')}]\n"
            write(tmp_path / f"{c}{i}.yaml", f"schema: 1\n{ext}description: {c}{i}\n")
    start = time.monotonic()
    code, text = run(capsys, "validate", tmp_path / "a11.yaml")
    assert code == 0, text
    assert time.monotonic() - start < 5
    assert load_recipe(tmp_path / "a11.yaml").recipe.description == "a11"


def test_defect4_guests_do_not_nest(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Guest recipes that list guests, four per level over 11 levels (plan took 4^11
    steps): a guest recipe listing guests is a located problem."""
    head = (f"schema: 1\nhypervisor: {{spec: {fx}/hypervisor/xen-mini.yaml}}\n"
            f"kernels: {{k: {{line: {fx / MINI_LINE}, fragments: [base]}}}}\n"
            "images:\n  d: {role: dom0, kernel: k}\n  g: {role: guest, kernel: k}\n")
    for i in range(12):
        for c in "abcd":
            guests = "" if i == 0 else "guests:\n" + "".join(
                f"  - {{name: g{x}, recipe: {x}{i - 1}.yaml, type: pv}}\n" for x in "abcd")
            write(fx / "nest" / f"{c}{i}.yaml", head + guests)
    start = time.monotonic()
    refused(capsys, fx / "nest" / "a11.yaml", "a10.yaml:7: guests", "guests do not nest",
            hint="remove")
    assert time.monotonic() - start < 10
    code, text = run(capsys, "plan", "--cache-dir", fx / "cache", fx / "nest" / "a11.yaml")
    assert code == 2, text
    code, text = run(capsys, "validate", fx / "nest" / "a1.yaml")  # one level is fine
    assert code == 0, text


# -- 5. special files and wrong kinds of path -------------------------------------------------

@pytest.fixture
def odd(tmp_path: Path) -> Path:
    """A folder with a FIFO (``fifo``), a folder (``dir``), a patch folder without a
    series (``noseries``) and a folder holding a FIFO (``srcfifo``)."""
    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "dir").mkdir()
    write(folder / "noseries" / "0001-x.patch", "--- a/x\n+++ b/x\n")
    write(folder / "srcfifo" / "Makefile", "all:\n")
    os.mkfifo(folder / "srcfifo" / "pipe")
    return folder


KINDS = {  # a kernel's field: (setting, the words of the problem)
    "fragment /": ("fragments: [/]", "fragments[0]", "is a folder, not a regular file"),
    "fragment /proc": ("fragments: [/proc]", "fragments[0]", "is a folder"),
    "fragment FIFO": ("fragments: [{odd}/fifo]", "fragments[0]", "special file"),
    "fragment folder": ("fragments: [{odd}/dir]", "fragments[0]", "is a folder"),
    "base config /proc": ("base: file, base_config: /proc", "base_config", "is a folder"),
    "base config FIFO": ("base: file, base_config: {odd}/fifo", "base_config", "special file"),
    "source /": ("source: {{path: /}}", "source.path", "the root"),
    "source /proc": ("source: {{path: /proc}}", "source.path", "/proc"),
    "source FIFO": ("source: {{path: {odd}/fifo}}", "source.path", "FIFO"),
    "source holding a FIFO": ("source: {{path: {odd}/srcfifo}}", "source.path",
                              "srcfifo/pipe", "FIFO"),
    "patches without series": ("patches: {odd}/noseries", "patches", "no series file"),
    "patches a FIFO": ("patches: {odd}/fifo", "patches", "not a folder"),
}


@pytest.mark.parametrize("case", KINDS.values(), ids=KINDS.keys())
def test_defect5_special_files_and_wrong_kinds_of_path_are_refused_at_validate(
        fx: Path, odd: Path, capsys: pytest.CaptureFixture[str],
        case: tuple[str, ...]) -> None:
    setting, field, *words = case
    recipe = kernel_recipe(fx, setting.format(odd=odd))
    start = time.monotonic()
    refused(capsys, recipe, f"r.yaml:3: kernels.dom0.{field}", *words, hint=" ")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("setting,field,words", [
    ("spec: {odd}/dir", "hypervisor.spec", "is a folder, not a regular file"),
    ("spec: {fx}/hypervisor/xen-mini.yaml, config: [/]", "hypervisor.config[0]",
     "is a folder, not a regular file"),
    ("spec: {fx}/hypervisor/xen-mini.yaml, config: [{odd}/fifo]", "hypervisor.config[0]",
     "special file"),
    ("spec: {fx}/hypervisor/xen-mini.yaml, patches: {odd}/noseries", "hypervisor.patches",
     "no series file"),
], ids=["spec a folder", "config /", "config FIFO", "patches without series"])
def test_defect5_hypervisor_paths_of_the_wrong_kind_are_refused_at_validate(
        fx: Path, odd: Path, capsys: pytest.CaptureFixture[str], setting: str, field: str,
        words: str) -> None:
    recipe = write(fx / "r.yaml", f"schema: 1\nhypervisor: {{{setting.format(odd=odd, fx=fx)}}}\n")
    refused(capsys, recipe, f"r.yaml:2: {field}", words)


def test_defect5_a_patch_folder_without_series_in_a_spec_fails_at_validate(
        fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel line's own ``patches`` folder without ``series``: validate names the
    line file and field (it used to fail in the tree stage)."""
    (fx / MINI_LINE / "series").unlink()
    refused(capsys, fx / "kernel.yaml", "line.yaml:7: patches", "no series file",
            hint="series")


def test_defect5_validate_of_a_fifo_or_a_folder_is_exit_2_at_once(
        odd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (odd / "fifo", odd / "dir", Path("/dev/zero")):
        code, text = run(capsys, "validate", path)
        assert code == 2 and "not a regular file" in text and "hint:" in text, text


# -- 6. bad input is a located problem, never an internal error -------------------------------

@pytest.mark.parametrize("line,field,words,hint", [
    ("description: 2024-05-01", "description", "valid string", "quote"),
    ("description: !!float abc", "description", "'abc' is not a valid float", "quote"),
    ("epoch: " + "1" * 4000, "epoch", "larger than any value", ""),
    ("description: " + "[" * 3000 + "]" * 3000, "", "nest deeper than", ""),
], ids=["a date as a string", "!!float abc", "4000 digits", "deep nesting"])
def test_defect6_yaml_values_a_field_cannot_take_are_located(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, field: str,
        words: str, hint: str) -> None:
    recipe = write(tmp_path / "r.yaml", f"schema: 1\n{line}\n")
    refused(capsys, recipe, f"r.yaml:2: {field}", words, hint=hint or " ")


def test_defect6_symlink_loops_are_located(fx: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    (fx / "loop1").symlink_to("loop2")
    (fx / "loop2").symlink_to("loop1")
    for setting, where in (("extends: [loop1]", "extends[0]"),
                           ("hypervisor: {spec: loop1}", "hypervisor.spec"),
                           (f"kernels: {{dom0: {{line: {MINI_LINE}, source: {{path: loop1}}}}}}",
                            "kernels.dom0.source.path"),
                           (f"kernels: {{dom0: {{line: {MINI_LINE}, fragments: "
                            "[loop1.config]}}", "kernels.dom0.fragments[0]")):
        if "fragments" in setting:
            (fx / "loop1.config").symlink_to("loop1.config")
        recipe = write(fx / "r.yaml", f"schema: 1\n{setting}\n")
        refused(capsys, recipe, f"r.yaml:2: {where}", hint=" ")


def _path_source_with(fx: Path, make: str) -> Path:
    src = fx / "src" / "odd-tree"
    shutil.copytree(fx / "src" / "linux-mini", src)
    if make == "non-UTF-8 name":
        with open(os.path.join(os.fsencode(src), b"bad-\xff\xfe.c"), "wb") as f:
            f.write(b"x")
    else:  # a path longer than PATH_MAX below it
        fd = os.open(src, os.O_RDONLY)
        try:
            for _ in range(25):
                os.mkdir("d" * 200, dir_fd=fd)
                new = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = new
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
        finally:
            os.close(fd)
    return src


@pytest.mark.parametrize("make,words", [("non-UTF-8 name", "not UTF-8"),
                                        ("over-long path", "too long")])
def test_defect6_odd_file_names_in_a_path_source_are_located(
        fx: Path, capsys: pytest.CaptureFixture[str], make: str, words: str) -> None:
    src = _path_source_with(fx, make)
    recipe = kernel_recipe(fx, f"source: {{path: {src}}}")
    try:
        refused(capsys, recipe, "r.yaml:3: kernels.dom0.source.path", words, hint=" ")
        code, text = run(capsys, "plan", "--cache-dir", fx / "cache", recipe)
        assert code == 2, text
    finally:
        if make == "over-long path":
            shutil.rmtree(src, ignore_errors=True)  # (rmtree copes with deep trees)


def test_defect6_an_over_long_path_source_name_is_located(
        fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = kernel_recipe(fx, f"source: {{path: {'p' * 300}}}")
    refused(capsys, recipe, "r.yaml:3: kernels.dom0.source.path", "no such file", hint=" ")


@pytest.mark.parametrize("kind", ["dangling symlink", "folder", "chmod 000"])
def test_defect6_an_unreadable_fragment_is_located(
        fx: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """Root reads a chmod 000 file, so as root the unreadable fragment is a dangling
    symlink or a folder (the chmod 000 case runs for other users)."""
    frag = fx / "frag.config"
    if kind == "dangling symlink":
        frag.symlink_to(fx / "nowhere.config")
    elif kind == "folder":
        frag.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        frag.write_text("CONFIG_X=y\n")
        frag.chmod(0)
    recipe = kernel_recipe(fx, f"fragments: [{frag}]")
    refused(capsys, recipe, "r.yaml:3: kernels.dom0.fragments[0]", str(frag), hint=" ")
    code, text = run(capsys, "plan", "--cache-dir", fx / "cache", recipe)
    assert code == 2, text


def test_defect6_a_guest_size_that_validates_also_plans(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``images: {g: {role: guest, size: 256M}}`` passed validate and crashed plan with a
    raw pydantic error; every size validate takes plans, a smaller one is located."""
    for size, ok in (("256M", True), ("255M", False), ("63M", False), ("16385G", False)):
        recipe = write(tmp_path / "r.yaml",
                       f"schema: 1\nimages: {{g: {{role: guest, size: {size}}}}}\n")
        code, text = run(capsys, "validate", recipe)
        assert (code == 0) == ok, text
        if ok:
            code, text = run(capsys, "plan", "--cache-dir", tmp_path / "cache", recipe)
            assert code == 0, text
        else:
            assert "r.yaml:2: images.g.size" in text and "hint:" in text, text


def test_defect6_a_guest_name_that_is_no_host_name_is_located(
        fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A guest's host name defaults to its name; a name validate took (``web_1``) was no
    host name for the disk stage: plan crashed with a raw pydantic error."""
    recipe = write(fx / "r.yaml", "schema: 1\nextends: [host.yaml]\nname: r\nguests:\n"
                   "  - {name: web_1, recipe: guest.yaml, type: pvh}\n")
    refused(capsys, recipe, "r.yaml:5: guests[0].name", "web_1", hint="hostname")
    recipe.write_text(recipe.read_text().replace("type: pvh", "type: pvh, hostname: web-1"))
    code, text = run(capsys, "plan", "--cache-dir", fx / "cache", recipe)
    assert code == 0, text


def _as_nobody(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``xenforge ARGV`` in a forked child that cannot write what root owns (uid 65534
    when run as root), its exit code and output."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def target() -> None:
        import contextlib as cl

        os.environ.update(env)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        buf = io.StringIO()
        with cl.redirect_stdout(buf), cl.redirect_stderr(buf):
            code = cli.main(argv)
        child.send((code, buf.getvalue()))

    proc = ctx.Process(target=target)
    proc.start()
    assert parent.poll(60), "the child did not answer"
    code, text = parent.recv()
    proc.join(10)
    return int(code), str(text)


def test_defect6_a_read_only_cache_is_exit_2_for_what_writes_it(fx: Path) -> None:
    """A cache the user cannot write (root's, or chmod a-w): ``build``, ``cache gc`` and
    ``cache verify`` are exit 2 naming the cache and the fix, not internal errors at a
    lock; reading it (``cache ls``, ``plan``) still works."""
    import tempfile

    made: list[Path] = []

    def folder(prefix: str, mode: int) -> Path:  # not below root's private tmp_path
        path = Path(tempfile.mkdtemp(prefix=prefix))
        path.chmod(mode)
        made.append(path)
        return path

    try:
        top = folder("xf-ro-", 0o755)
        outs = folder("xf-out-", 0o777)  # the export's place is writable, the cache not
        env = {"XENFORGE_CCACHE_DIR": str(folder("xf-ccache-", 0o777))}
        shutil.copytree(fx, top / "fx", symlinks=True)
        cache = top / "cache"
        assert cli.main(["--cache-dir", str(cache), "build", str(top / "fx" / "kernel.yaml"),
                         "--target", "tree:mini", "-o", str(top / "out"), "--plain"]) == 0
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o555 if p.is_dir() else 0o444)
        for action in (["build", str(top / "fx" / "kernel.yaml"), "-o", str(outs), "--plain"],
                       ["cache", "gc", "--older-than", "0"], ["cache", "verify"]):
            code, text = _as_nobody(["--cache-dir", str(cache), *action], env)
            assert code == 2, text
            assert "internal error" not in text and "Traceback" not in text
            assert f"cache directory {cache} is not writable" in text, text
            assert "pass --cache-dir DIR" in text
        code, text = _as_nobody(["--cache-dir", str(cache), "cache", "ls"], env)
        assert code == 0 and "tree:mini" in text, text
        code, text = _as_nobody(["--cache-dir", str(cache), "plan",  # (no logs folder yet)
                                 str(top / "fx" / "guest.yaml")], env)
        assert code == 0 and "rootfs:guest" in text, text
        assert not list(outs.iterdir())
    finally:
        for top in made:
            for p in [top, *top.rglob("*")]:
                if not p.is_symlink():
                    p.chmod(0o755)
            shutil.rmtree(top)


# -- 8. what is written into generated files --------------------------------------------------

INJECT = "console=hvc0\\\"\\nmemory = 99999\\n#"


@pytest.mark.parametrize("section,setting,field", [
    ("kernels", f"guest: {{cmdline: \"{INJECT}\"}}", "kernels.guest.cmdline"),
    ("hypervisor", 'cmdline: "dom0_mem=1G\\nmenuentry x {"', "hypervisor.cmdline"),
    ("images", f"dom0: {{bridge: \"xenbr0{INJECT}\"}}", "images.dom0.bridge"),
    ("guests", f"- {{name: web1, recipe: guest.yaml, type: pvh, bridge: \"b{INJECT}\"}}",
     "guests[0].bridge"),
    ("target", 'mirror: "http://deb.debian.org/debian\\ndeb http://evil/ x main"',
     "target.mirror"),
    ("target", 'security_mirror: "-o/tmp/x"', "target.security_mirror"),
], ids=["cmdline into the xl config", "newline into grub.cfg", "bridge of the dom0",
        "bridge of a guest", "mirror into sources.list", "mirror as an option"])
def test_defect8_strings_that_would_inject_into_generated_files_are_refused(
        fx: Path, capsys: pytest.CaptureFixture[str], section: str, setting: str,
        field: str) -> None:
    recipe = write(fx / "r.yaml", f"schema: 1\nextends: [host.yaml]\nname: r\n{section}:\n"
                   f"  {setting}\n")
    refused(capsys, recipe, f"r.yaml:5: {field}", hint=" ")


def test_defect8_the_xl_config_writer_quotes_or_refuses_what_it_writes() -> None:
    """Even past the recipe's checks, no value makes a second line in an xl config."""
    good = {"name": "web1", "type": "pvh", "memory": 256, "vcpus": 1, "autostart": True,
            "bridge": "xenbr0", "hostname": "web1", "cmdline": "console=hvc0 quiet"}
    text = guest_config(Guest.model_validate(good), ramdisk=True)
    assert 'cmdline = "root=/dev/xvda ro console=hvc0 quiet systemd.hostname=web1"' in text
    for field, bad in (("cmdline", 'x" \nmemory = 99999'), ("cmdline", "a\\"),
                       ("bridge", 'b"\nmemory=1'), ("hostname", "h\nmemory = 1")):
        with pytest.raises(ValueError):
            guest_config(Guest.model_validate({**good, field: bad}), ramdisk=True)
    g = Guest.model_validate(good)
    object.__setattr__(g, "cmdline", 'x"\nmemory = 99999')  # past the model's checks
    with pytest.raises(ValueError, match="cmdline"):
        guest_config(g, ramdisk=True)


def test_defect8_a_release_file_mirror_is_checked_too(
        fx: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The release file's mirrors reach the same sources.list: a newline there is located
    in that file."""
    from xenforge.core.data import data_dir

    releases = fx / "releases"
    shutil.copytree(REPO / "releases", releases)
    trixie = releases / "debian-trixie.yaml"
    trixie.write_text(trixie.read_text().replace(
        "mirror: http://deb.debian.org/debian\n",
        'mirror: "http://deb.debian.org/debian\\ndeb http://evil/ x main"\n', 1))
    monkeypatch.setattr("xenforge.recipe.load.data_dir",  # where the loader looks
                        lambda name: releases if name == "releases" else data_dir(name))
    refused(capsys, fx / "kernel.yaml", "debian-trixie.yaml:", "mirror", hint=" ")

