"""The planner: recipe -> graph of nodes whose ids are a hash chain over stage, version,
options, input ids and the content of input files."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xenforge import defaults
from xenforge.cli import app as cli
from xenforge.plan import plan
from xenforge.plan.graph import Graph, explain_change
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
#: the buildroot of a recipe that names no target
BUILDROOT = f"buildroot:debian-{defaults.RELEASE}"

#: two kernels of one line (sharing its source and tree), path and named fragments
TWO_KERNELS = """\
schema: 1
name: two-kernels
kernels:
  dom0:
    line: kernel_patches/mini
    fragments: [base, dom0, extra.config]
  guest:
    line: kernel_patches/mini
    fragments: [base, domu]
"""


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    """A private copy of the fixtures (tests edit files in it)."""
    dest = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dest)
    (dest / "two-kernels.yaml").write_text(TWO_KERNELS)
    return dest


def _plan(recipe: Path) -> Graph:
    return plan(load_recipe(recipe))


def _ids(g: Graph) -> dict[str, str]:
    return {name: n.id for name, n in g.nodes.items()}


def _changed(before: Graph, after: Graph) -> set[str]:
    assert before.nodes.keys() == after.nodes.keys()
    return {name for name in before.nodes if before.nodes[name].id != after.nodes[name].id}


def test_graph_shape(fx: Path) -> None:
    g = _plan(fx / "two-kernels.yaml")
    assert list(g.nodes) == ["source:mini", "tree:mini", BUILDROOT,
                             "kernel:dom0", "kernel:guest"]
    assert g.nodes["tree:mini"].inputs == {"source": "source:mini"}
    for kernel in ("kernel:dom0", "kernel:guest"):
        assert g.nodes[kernel].inputs == {"tree": "tree:mini",
                                          "buildroot": BUILDROOT}
    assert g.nodes["source:mini"].files == {"path": fx / "src" / "linux-mini"}
    dom0 = g.nodes["kernel:dom0"]
    line = fx / "kernel_patches" / "mini"
    assert dom0.files == {"fragments": [line / "base.config", line / "dom0.config",
                                        fx / "extra.config"]}
    assert all(len(n.id) == 64 for n in g.nodes.values())
    assert len({n.id for n in g.nodes.values()}) == 5
    assert g.downstream("tree:mini") == {"tree:mini", "kernel:dom0", "kernel:guest"}
    assert g.downstream("source:mini") == set(g.nodes) - {BUILDROOT}
    assert g.downstream("kernel:guest") == {"kernel:guest"}


def test_ids_are_stable_across_plans_and_processes(fx: Path) -> None:
    first = _ids(_plan(fx / "two-kernels.yaml"))
    assert _ids(_plan(fx / "two-kernels.yaml")) == first
    # a fresh interpreter (other hash seed, no memo) computes the same ids
    proc = subprocess.run(
        [sys.executable, "-m", "xenforge.cli", "plan", "--json", str(fx / "two-kernels.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO),
             "XENFORGE_CACHE_DIR": str(fx.parent / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert {n["name"]: n["id"] for n in json.loads(proc.stdout)["nodes"]} == first


def test_ids_do_not_depend_on_where_the_checkout_is(fx: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "another" / "checkout"
    shutil.copytree(fx, elsewhere)
    assert _ids(_plan(elsewhere / "two-kernels.yaml")) == _ids(_plan(fx / "two-kernels.yaml"))


@pytest.mark.parametrize("edited,consumers", [
    ("kernel_patches/mini/dom0.config", ["kernel:dom0"]),
    ("kernel_patches/mini/domu.config", ["kernel:guest"]),
    ("kernel_patches/mini/base.config", ["kernel:dom0", "kernel:guest"]),
    ("extra.config", ["kernel:dom0"]),
    ("kernel_patches/mini/0001-add-option.patch", ["tree:mini"]),
    ("kernel_patches/mini/series", ["tree:mini"]),
    ("src/linux-mini/Makefile", ["source:mini"]),
])
def test_an_edit_changes_exactly_the_ids_downstream(fx: Path, edited: str,
                                                    consumers: list[str]) -> None:
    before = _plan(fx / "two-kernels.yaml")
    with open(fx / edited, "a") as f:
        f.write("# edited\n")
    after = _plan(fx / "two-kernels.yaml")
    expected = set().union(*(before.downstream(c) for c in consumers))
    assert _changed(before, after) == expected


def test_files_beside_the_series_that_it_does_not_list_do_not_change_the_tree(fx: Path
                                                                                ) -> None:
    """line.yaml and the fragments live in the patch folder (patches: .) but are not
    patches: the tree does not depend on them."""
    before = _plan(fx / "two-kernels.yaml")
    (fx / "kernel_patches" / "mini" / "NOTES.txt").write_text("not a patch\n")
    assert _changed(before, _plan(fx / "two-kernels.yaml")) == set()


def test_an_option_change_changes_its_node_and_below(fx: Path) -> None:
    before = _plan(fx / "two-kernels.yaml")
    text = TWO_KERNELS.replace("    fragments: [base, domu]",
                               "    fragments: [base, domu]\n    base: defconfig")
    (fx / "two-kernels.yaml").write_text(text)
    after = _plan(fx / "two-kernels.yaml")
    assert _changed(before, after) == {"kernel:guest"}
    assert explain_change(after.nodes["kernel:guest"],
                          {"key": before.nodes["kernel:guest"].key()}) == "options changed: base"


def test_touching_without_editing_changes_nothing(fx: Path) -> None:
    before = _plan(fx / "two-kernels.yaml")
    for f in fx.rglob("*"):
        f.touch()
    assert _changed(before, _plan(fx / "two-kernels.yaml")) == set()


def test_explain_change() -> None:
    from xenforge.plan.graph import Node

    node = Node(name="tree:x", stage="tree", version=2, options={"a": 1},
                input_ids={"source": "s2"}, file_hashes={"patches": "p2"})
    assert explain_change(node, None) == "never built"
    old = {"key": {"stage": "tree", "version": 1, "options": {"a": 0},
                   "inputs": {"source": "s1"}, "files": {"patches": "p2"}}}
    why = explain_change(node, old)
    assert "stage version 1 -> 2" in why
    assert "options changed: a" in why
    assert "input source changed" in why
    assert "patches" not in why
    assert explain_change(node, {"key": node.key()}) == \
        "previous output was removed from the cache"


# -- the CLI ---------------------------------------------------------------------------------

def test_plan_json(fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    code = cli.main(["--cache-dir", str(cache), "plan", "--json", str(fx / "two-kernels.yaml")])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == "two-kernels"
    nodes = {n["name"]: n for n in data["nodes"]}
    assert list(nodes) == ["source:mini", "tree:mini", BUILDROOT,
                           "kernel:dom0", "kernel:guest"]
    assert nodes["kernel:dom0"]["inputs"] == {"tree": "tree:mini",
                                              "buildroot": BUILDROOT}
    assert nodes["kernel:dom0"]["stage"] == "kernel"
    assert all(n["cached"] is False for n in nodes.values())
    assert set(nodes["kernel:guest"]["file_hashes"]) == set(nodes["kernel:guest"]["files"])
    assert _ids(_plan(fx / "two-kernels.yaml")) == {k: v["id"] for k, v in nodes.items()}


def test_several_recipes_plan_as_one_graph_with_shared_nodes_once(
        fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`xenforge plan A B` plans what `xenforge build A B` builds: one graph, a node the
    recipes share (same id) once."""
    cache = str(tmp_path / "cache")
    alone = {}
    for name in ("kernel.yaml", "two-kernels.yaml"):
        assert cli.main(["--cache-dir", cache, "plan", "--json", str(fx / name)]) == 0
        alone[name] = {n["id"] for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert cli.main(["--cache-dir", cache, "plan", "--json", str(fx / "kernel.yaml"),
                     str(fx / "two-kernels.yaml")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == "mini-kernel+two-kernels"
    ids = [n["id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == alone["kernel.yaml"] | alone["two-kernels.yaml"]
    shared = alone["kernel.yaml"] & alone["two-kernels.yaml"]
    assert shared and len(ids) == sum(map(len, alone.values())) - len(shared)
    assert cli.main(["--cache-dir", cache, "plan", str(fx / "kernel.yaml"),
                     str(fx / "two-kernels.yaml")]) == 0
    assert capsys.readouterr().out.startswith(
        f"recipe mini-kernel+two-kernels: {len(ids)} nodes (0 cached")


def test_plan_of_a_broken_recipe_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    broken = REPO / "tests" / "recipes" / "broken" / "bad-size.yaml"
    assert cli.main(["plan", str(broken)]) == 2
    assert "images.guest.size" in capsys.readouterr().err


def _plan_lines(cache: Path, recipe: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert cli.main(["--cache-dir", str(cache), "plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    lines = {}
    for ln in out.splitlines()[1:]:
        name = ln.split()[0]
        lines[name] = ln
    return lines


def test_plan_says_never_built_then_cached_then_what_changed(
        fx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = fx / "two-kernels.yaml"
    cache_dir = tmp_path / "cache"
    lines = _plan_lines(cache_dir, recipe, capsys)
    assert all("build: never built" in ln for ln in lines.values())

    # build the source and the tree (the kernel stage would compile Linux)
    assert cli.main(["--cache-dir", str(cache_dir), "build", str(recipe), "--target",
                     "tree:mini", "-o", str(tmp_path / "out"), "--quiet"]) == 0

    lines = _plan_lines(cache_dir, recipe, capsys)
    assert "cached" in lines["source:mini"] and "cached" in lines["tree:mini"]
    assert "never built" in lines["kernel:dom0"]

    with open(fx / "kernel_patches" / "mini" / "0001-add-option.patch", "a") as f:
        f.write("\n")
    lines = _plan_lines(cache_dir, recipe, capsys)
    assert lines["source:mini"].endswith("cached")
    assert "build: file patches changed" in lines["tree:mini"]

    (fx / "src" / "linux-mini" / "Makefile").write_text("VERSION = 7\n")
    lines = _plan_lines(cache_dir, recipe, capsys)
    assert "file path changed" in lines["source:mini"]
    assert "input source changed" in lines["tree:mini"]


def test_a_same_size_edit_right_after_a_plan_is_seen(fx: Path) -> None:
    """Content hashes may be memoised within a process, but never across an edit, even one
    that keeps the size and lands within the file system's timestamp granularity."""
    frag = fx / "kernel_patches" / "mini" / "dom0.config"
    for _ in range(20):
        before = _plan(fx / "two-kernels.yaml")
        text = frag.read_text()
        frag.write_text(text.replace("=y", "=n") if "=y" in text else text.replace("=n", "=y"))
        assert _changed(before, _plan(fx / "two-kernels.yaml")) == {"kernel:dom0"}


def _need_stages(*names: str) -> None:
    from xenforge.stages import REGISTRY

    missing = [REGISTRY[n].split(":")[0] for n in names
               if importlib.util.find_spec(REGISTRY[n].split(":")[0]) is None]
    if missing:
        pytest.skip(f"stage modules not written yet: {', '.join(missing)}")


@pytest.mark.parametrize("edited,consumers", [
    ("hypervisor/mini.config", ["hypervisor"]),
    ("hypervisor/patches/0001-readme.patch", ["tree:xen-mini"]),
    ("src/xen-mini-4.17.5.tar.gz", ["source:xen-mini"]),
    ("kernel_patches/mini/domu.config", ["kernel:guest"]),
])
def test_host_recipe_edits_change_exactly_the_ids_downstream(fx: Path, edited: str,
                                                             consumers: list[str]) -> None:
    _need_stages("hypervisor", "toolstack", "xen-debs", "kernel")
    before = _plan(fx / "host.yaml")
    assert {"source:xen-mini", "tree:xen-mini", "hypervisor", "toolstack", "xen-debs",
            "source:mini", "tree:mini", "kernel:dom0", "kernel:guest"} <= set(before.nodes)
    with open(fx / edited, "ab") as f:
        f.write(b"\n")
    after = _plan(fx / "host.yaml")
    expected = set().union(*(before.downstream(c) for c in consumers))
    assert _changed(before, after) == expected


def test_kernels_of_one_line_with_different_sources_get_different_trees(fx: Path) -> None:
    """dom0 overrides the line's source, guest keeps it: two sources, two trees."""
    (fx / "two-sources.yaml").write_text(TWO_KERNELS.replace(
        "    fragments: [base, dom0, extra.config]\n",
        "    fragments: [base, dom0, extra.config]\n    source:\n      apt: linux=6.1.158-1\n"))
    g = _plan(fx / "two-sources.yaml")
    dom0_src = g.nodes[g.nodes[g.nodes["kernel:dom0"].inputs["tree"]].inputs["source"]]
    guest_src = g.nodes[g.nodes[g.nodes["kernel:guest"].inputs["tree"]].inputs["source"]]
    assert dom0_src.options["spec"] == {"apt": "linux=6.1.158-1"}
    assert guest_src.options["spec"] == {"path": "linux-mini"}
    assert g.nodes["kernel:dom0"].inputs != g.nodes["kernel:guest"].inputs
    assert len(g.nodes) == 7  # two sources, two trees, the buildroot, two kernels
    # the same recipe without the override shares one source and one tree
    assert len(_plan(fx / "two-kernels.yaml").nodes) == 5


def test_two_different_nodes_cannot_share_a_name() -> None:
    from xenforge.plan.graph import Node

    g = Graph(recipe="r")
    first = g.add(Node(name="source:x", stage="source", options={"spec": {"apt": "a=1"}}))
    assert g.add(Node(name="source:x", stage="source", options={"spec": {"apt": "a=1"}})) \
        is first
    with pytest.raises(ValueError, match="source:x"):
        g.add(Node(name="source:x", stage="source", options={"spec": {"apt": "a=2"}}))


# -- the build environment: SOURCE_DATE_EPOCH and the target release ------------------------

def test_each_node_dates_from_its_newest_pinned_source() -> None:
    loaded = load_recipe(REPO / "recipes" / "xen-host.yaml")
    assert loaded.hypervisor_spec is not None and loaded.hypervisor_spec.released
    xen = loaded.hypervisor_spec.released
    linux = loaded.kernel_lines["dom0"].released
    assert linux and xen and linux != xen
    g = plan(loaded)
    epoch = {n.name: n.env.epoch for n in g.nodes.values() if n.env}
    assert epoch["hypervisor"] == epoch["toolstack"] == epoch["xen-debs"] == xen
    assert epoch["kernel:dom0"] == epoch["kernel:guest"] == linux
    assert epoch["rootfs:xen-host"] == epoch["image:xen-host"] == max(xen, linux)
    # so a recipe with the same Xen and other kernels shares the Xen nodes
    hyp = plan(load_recipe(REPO / "recipes" / "xen-hypervisor.yaml"))
    assert hyp.nodes["hypervisor"].id == g.nodes["hypervisor"].id


def test_the_epoch_and_target_are_in_the_ids_of_what_they_change(fx: Path) -> None:
    before = _plan(fx / "two-kernels.yaml")
    recipe = fx / "two-kernels.yaml"
    recipe.write_text(recipe.read_text() + "epoch: 1234567890\n")
    after = _plan(recipe)
    # the fetched source and the unpacked tree do not depend on the date: shared
    assert _changed(before, after) == {"kernel:dom0", "kernel:guest"}
    assert after.nodes["kernel:dom0"].key()["env"] == {"epoch": 1234567890,
                                                      "target": f"debian/{defaults.RELEASE}"}
    assert "env" not in after.nodes["tree:mini"].key()
    why = explain_change(after.nodes["kernel:dom0"], {"key": before.nodes["kernel:dom0"].key()})
    assert "build epoch" in why


def test_one_default_per_setting() -> None:
    """The default Xen command line and the epoch fallback are written in one place
    (xenforge/defaults.py): no other module of the engine spells them out."""

    pkg = REPO / "xenforge"
    for value in (defaults.XEN_CMDLINE, str(defaults.EPOCH)):
        holders = [p.relative_to(REPO) for p in pkg.rglob("*.py")
                   if value in p.read_text()]
        assert holders == [Path("xenforge/defaults.py")], (value, holders)
    # mirrors are release data (releases/*.yaml), not code
    assert not [p for p in pkg.rglob("*.py") if "deb.debian.org" in p.read_text()]
    for element in (REPO / "image_elements").rglob("*"):
        if element.is_file():
            assert "dom0_mem=" not in element.read_text(errors="replace") or \
                element.suffix == ".rst", f"{element} spells out a Xen command line default"


def test_a_rootfs_hashes_only_the_element_folders_it_uses(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An element edit rebuilds the root filesystems that use the element (directly or by
    element-deps), not every image's."""
    from xenforge.lib.elements import own_folders

    for name, deps in {"a": "b\n# a comment\nopenssh-server\n", "b": "a\n", "c": ""}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "element-deps").write_text(deps)
    assert own_folders(["a", "debian-minimal"], tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert own_folders(["c"], tmp_path) == [tmp_path / "c"]

    copy = tmp_path / "image_elements"
    shutil.copytree(REPO / "image_elements", copy)
    monkeypatch.setattr("xenforge.plan.images.data_dir", lambda name: copy)
    before = plan(load_recipe(REPO / "recipes" / "xen-host.yaml"))
    guest = [p.name for p in before.nodes["rootfs:guest"].files["elements"]]
    assert "xen-domu" in guest and "xen-dom0" not in guest and "xenforge-live" not in guest
    (copy / "xenforge-live" / "README.rst").write_text("edited\n")  # the ISO's element
    after = plan(load_recipe(REPO / "recipes" / "xen-host.yaml"))
    changed = {n for n in before.nodes if before.nodes[n].id != after.nodes[n].id}
    assert changed == {"rootfs:xen-host", "image:xen-host", "iso:xen-host"}
    (copy / "xenforge-apt-repo" / "README.rst").write_text("edited\n")  # a dep of both roles
    again = plan(load_recipe(REPO / "recipes" / "xen-host.yaml"))
    assert {"rootfs:guest", "rootfs:xen-host"} <= {
        n for n in after.nodes if after.nodes[n].id != again.nodes[n].id}
