"""Patch series: parsing, all-or-nothing application, error messages; the tree stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from stagectx import stage_context

from xenforge.core import run as runner
from xenforge.core.errors import ValidationFailed
from xenforge.core.hashing import tree_hash
from xenforge.lib.patches import (
    PatchFailed,
    apply_series,
    parse_failures,
    read_series,
    series_files,
    unlisted_patches,
)
from xenforge.sources.fetch import fetch
from xenforge.sources.specs import PathSource
from xenforge.stages.base import StageContext
from xenforge.stages.tree import TreeStage

HELLO = "#include <stdio.h>\nint main(void)\n{\n    puts(\"hello\");\n    return 0;\n}\n"

P_GREET = """\
--- a/src/hello.c
+++ b/src/hello.c
@@ -1,6 +1,6 @@
 #include <stdio.h>
 int main(void)
 {
-    puts("hello");
+    puts("hello, xen");
     return 0;
 }
"""

P_NEWFILE = """\
--- /dev/null
+++ b/extra/dir/notes.txt
@@ -0,0 +1,2 @@
+added by a patch
+second line
"""

P_README_P0 = """\
--- README
+++ README
@@ -1 +1,2 @@
 hello project
+patched with -p0
"""

# expects text that is not in the tree
P_STALE = """\
--- a/src/hello.c
+++ b/src/hello.c
@@ -1,6 +1,6 @@
 #include <stdio.h>
 int main(void)
 {
-    puts("goodbye");
+    puts("farewell");
     return 0;
 }
"""

P_MISSING_FILE = """\
--- a/src/nope.c
+++ b/src/nope.c
@@ -1 +1 @@
-a
+b
"""


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "hello.c").write_text(HELLO)
    (root / "README").write_text("hello project\n")
    return root


def make_series(root: Path, series: str, patches: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "series").write_text(series)
    for name, text in patches.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# -- parsing --------------------------------------------------------------------------------

def test_series_parsing(tmp_path: Path) -> None:
    d = make_series(tmp_path / "p", "# Xen fixes\n\n0001-a.patch\n  0002-b.patch -p0  # README\n"
                    "sub/0003-c.patch -p2\n#0004-disabled.patch\n",
                    {"0001-a.patch": "", "0002-b.patch": "", "sub/0003-c.patch": "",
                     "0004-disabled.patch": "", "0005-forgotten.patch": ""})
    entries = read_series(d)
    assert [(e.name, e.strip, e.line) for e in entries] == [
        ("0001-a.patch", 1, 3), ("0002-b.patch", 0, 4), ("sub/0003-c.patch", 2, 5)]
    assert series_files(d) == [d / "series", d / "0001-a.patch", d / "0002-b.patch",
                               d / "sub/0003-c.patch"]
    assert unlisted_patches(d) == ["0004-disabled.patch", "0005-forgotten.patch"]


def test_missing_patches_are_named_with_their_series_line(tmp_path: Path) -> None:
    d = make_series(tmp_path / "p", "0001-a.patch\n0002-gone.patch\n0003-also-gone.patch -p1\n",
                    {"0001-a.patch": ""})
    with pytest.raises(ValidationFailed) as exc:
        read_series(d)
    probs = exc.value.problems
    assert [(p.file, p.line) for p in probs] == [(d / "series", 2), (d / "series", 3)]
    assert "0002-gone.patch does not exist" in probs[0].message
    text = exc.value.render()
    assert f"{d / 'series'}:2:" in text and f"{d / 'series'}:3:" in text
    assert exc.value.exit_code == 2


def test_bad_series_lines(tmp_path: Path) -> None:
    d = make_series(tmp_path / "p", "a.patch -R\na.patch\n../outside.patch\n/etc/passwd\n",
                    {"a.patch": ""})
    (tmp_path / "outside.patch").write_text("")
    with pytest.raises(ValidationFailed) as exc:
        read_series(d)
    msgs = [(p.line, p.message) for p in exc.value.problems]
    assert msgs[0][0] == 1 and "unknown option '-R'" in msgs[0][1]
    assert msgs[1][0] == 2 and "listed twice" in msgs[1][1]
    assert msgs[2][0] == 3 and "outside" in msgs[2][1]
    assert msgs[3][0] == 4 and "outside" in msgs[3][1]


def test_no_series_file(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    with pytest.raises(ValidationFailed, match="1 problem"):
        read_series(tmp_path / "p")


# -- applying -------------------------------------------------------------------------------

def test_good_series_applies(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    d = make_series(tmp_path / "p", "0001-greet.patch\n0002-new.patch\n0003-readme.patch -p0\n",
                    {"0001-greet.patch": P_GREET, "0002-new.patch": P_NEWFILE,
                     "0003-readme.patch": P_README_P0})
    applied = apply_series(tree, d, log=tmp_path / "log")
    assert [a["name"] for a in applied] == ["0001-greet.patch", "0002-new.patch",
                                            "0003-readme.patch"]
    assert applied[0]["sha256"] == hashlib.sha256(P_GREET.encode()).hexdigest()
    assert applied[2]["strip"] == 0
    assert 'puts("hello, xen")' in (tree / "src" / "hello.c").read_text()
    assert (tree / "extra" / "dir" / "notes.txt").read_text() == "added by a patch\nsecond line\n"
    assert (tree / "README").read_text().endswith("patched with -p0\n")
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))
    assert "patching file src/hello.c" in (tmp_path / "log").read_text()


def test_failing_patch_names_patch_file_and_hunk_and_restores_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    before = tree_hash(tree)
    d = make_series(tmp_path / "p", "0001-greet.patch\n0002-new.patch\n0003-stale.patch\n",
                    {"0001-greet.patch": P_GREET, "0002-new.patch": P_NEWFILE,
                     "0003-stale.patch": P_STALE})
    with pytest.raises(PatchFailed) as exc:
        apply_series(tree, d, log=tmp_path / "log", source="hello_2.10.orig.tar.gz")
    err = exc.value
    assert str(d / "0003-stale.patch") in err.message
    assert "series line 3" in err.message
    assert err.failures == ["src/hello.c: hunk #1 FAILED at line 1"]
    assert "refresh the patch against hello_2.10.orig.tar.gz" in err.hint
    assert err.exit_code == 1
    # the two patches that did apply were reversed: the tree is exactly as before
    assert tree_hash(tree) == before
    assert not (tree / "extra").exists()


def test_patch_for_a_missing_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    before = tree_hash(tree)
    d = make_series(tmp_path / "p", "x.patch\n", {"x.patch": P_MISSING_FILE})
    with pytest.raises(PatchFailed) as exc:
        apply_series(tree, d, log=tmp_path / "log")
    assert exc.value.failures == ["a/src/nope.c: no such file in the tree (wrong -p level?)"]
    assert tree_hash(tree) == before


def test_already_applied_patch_is_reported(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    d = make_series(tmp_path / "p", "a.patch\n", {"a.patch": P_GREET})
    apply_series(tree, d, log=tmp_path / "log")
    with pytest.raises(PatchFailed) as exc:
        apply_series(tree, d, log=tmp_path / "log")
    assert exc.value.failures == ["src/hello.c: already applied (or reversed)"]


def test_garbage_patch_is_reported(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    d = make_series(tmp_path / "p", "a.patch\n", {"a.patch": "this is not a diff\n"})
    with pytest.raises(PatchFailed) as exc:
        apply_series(tree, d, log=tmp_path / "log")
    assert exc.value.failures == ["Only garbage was found in the patch input."]


def test_fuzz_is_off_by_default(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    # the first context line differs: applies only with fuzz
    fuzzy = P_GREET.replace(" #include <stdio.h>", " #include <stdlib.h>")
    d = make_series(tmp_path / "p", "a.patch\n", {"a.patch": fuzzy})
    with pytest.raises(PatchFailed):
        apply_series(tree, d, log=tmp_path / "log")
    assert apply_series(tree, d, log=tmp_path / "log", fuzz=2)


def test_parse_failures_of_several_files() -> None:
    out = ["checking file a.c", "Hunk #2 FAILED at 120.", "Hunk #3 FAILED at 200.",
           "2 out of 3 hunks FAILED", "checking file b.c", "checking file 'c d.c'",
           "Hunk #1 FAILED at 5 (different line endings)."]
    assert parse_failures(out) == ["a.c: hunk #2 FAILED at line 120",
                                   "a.c: hunk #3 FAILED at line 200",
                                   "c d.c: hunk #1 FAILED at line 5"]


# -- the tree stage -------------------------------------------------------------------------

def _source_node(tmp_path: Path) -> Path:
    top = make_tree(tmp_path / "hello-2.10")
    archive = tmp_path / "hello-2.10.tar.xz"
    runner.run(["tar", "-J", "-c", "-f", archive, "-C", tmp_path, top.name])
    out = tmp_path / "source-out"
    fetch(PathSource(path=archive), out, downloads=tmp_path / "dl", log=tmp_path / "src.log")
    return out


def _ctx(tmp_path: Path, source: Path, files: dict[str, Path]) -> StageContext:
    return stage_context(tmp_path, node="tree:hello", node_id="1" * 64,
                         options=TreeStage.Options.model_validate({}),
                         inputs={"source": source}, files=files, out=tmp_path / "tree-out",
                         work=tmp_path / "w", log=tmp_path / "tree.log")


def test_tree_stage_unpacks_and_patches(tmp_path: Path) -> None:
    source = _source_node(tmp_path)
    source_hash = tree_hash(source)
    d = make_series(tmp_path / "p", "0001-greet.patch\n", {"0001-greet.patch": P_GREET,
                                                           "0002-unlisted.patch": P_NEWFILE})
    ctx = _ctx(tmp_path, source, {"patches": d})
    TreeStage().run(ctx)
    assert 'puts("hello, xen")' in (ctx.out / "tree" / "src" / "hello.c").read_text()
    assert (ctx.out / "tree" / "README").is_file()
    listed = json.loads((ctx.out / "patches.json").read_text())
    assert listed == [{"name": "0001-greet.patch", "strip": 1,
                       "sha256": hashlib.sha256(P_GREET.encode()).hexdigest()}]
    assert "0002-unlisted.patch is not listed in series" in ctx.log.read_text()
    assert tree_hash(source) == source_hash  # the input node was not touched


def test_tree_stage_without_patches(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, _source_node(tmp_path), {})
    TreeStage().run(ctx)
    assert (ctx.out / "tree" / "src" / "hello.c").read_text() == HELLO
    assert json.loads((ctx.out / "patches.json").read_text()) == []


def test_tree_stage_failure_names_the_patch(tmp_path: Path) -> None:
    d = make_series(tmp_path / "p", "0001-stale.patch\n", {"0001-stale.patch": P_STALE})
    ctx = _ctx(tmp_path, _source_node(tmp_path), {"patches": d})
    with pytest.raises(PatchFailed) as exc:
        TreeStage().run(ctx)
    assert "hello-2.10.tar.xz" in exc.value.hint
    assert "src/hello.c: hunk #1 FAILED" in exc.value.message
