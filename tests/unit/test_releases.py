"""Target releases as data (releases/*.yaml), the buildroot node of each target, matrix
builds of several recipes in one graph, and running commands inside a buildroot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xenforge.cli import app as cli
from xenforge.core.errors import InputError, ValidationFailed
from xenforge.core.sandbox import Sandbox, host_package_of
from xenforge.plan import plan, plan_many
from xenforge.recipe.load import known_releases, load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
FIXTURES = REPO / "tests" / "recipes" / "fixtures"


def test_the_shipped_releases() -> None:
    assert {"debian/bookworm", "debian/trixie"} <= set(known_releases())
    loaded = load_recipe(RECIPES / "xen-host.yaml")
    assert loaded.release is not None and loaded.release.release == "trixie"
    assert loaded.release.version == "13"


def test_an_unknown_release_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("schema: 1\ntarget: {distribution: debian, release: "
                                     "potato}\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "r.yaml")
    text = exc.value.render()
    assert "r.yaml:2: target.release: unknown release debian/potato" in text
    assert "debian/bookworm" in text and "debian/trixie" in text


def test_the_target_sets_images_buildroot_and_packages() -> None:
    g = plan(load_recipe(RECIPES / "xen-host.yaml"))
    br = g.nodes["buildroot:debian-trixie"]
    assert br.options["release"] == "trixie" and "lintian" in br.options["packages"]
    for name in ("hypervisor", "toolstack", "xen-debs", "kernel:dom0", "kernel:guest"):
        assert g.nodes[name].inputs["buildroot"] == "buildroot:debian-trixie", name
        assert g.nodes[name].env is not None and g.nodes[name].env.target == "debian/trixie"
    assert g.nodes["kernel:dom0"].options["distribution"] == "trixie"
    assert g.nodes["xen-debs"].options["distribution"] == "trixie"
    assert g.nodes["rootfs:xen-host"].options["release"] == "trixie"
    assert g.nodes["rootfs:guest"].options["release"] == "trixie"
    assert "buildroot" not in g.nodes["rootfs:xen-host"].inputs  # DIB makes its own root


def test_a_matrix_shares_what_recipes_have_in_common() -> None:
    host, hyp = (load_recipe(RECIPES / f) for f in ("xen-host.yaml", "xen-hypervisor.yaml"))
    g = plan_many([host, hyp])
    alone = plan(host)
    # the hypervisor-only recipe adds nothing: every node of it is one of the host's
    assert set(g.nodes) == set(alone.nodes)
    assert {g.nodes[n].id for n in g.nodes} == {n.id for n in alone.nodes.values()}
    assert g.origins["hypervisor"] == [("xen-host", "hypervisor"),
                                       ("xen-hypervisor", "hypervisor")]
    assert set(g.view("xen-hypervisor").nodes) == set(plan(hyp).nodes)


def test_two_stacks_share_nothing_they_build_but_each_its_own_buildroot() -> None:
    new, old = (load_recipe(RECIPES / f) for f in ("xen-host.yaml", "xen-host-bookworm.yaml"))
    g = plan_many([new, old])
    assert "buildroot:debian-trixie" in g.nodes and "buildroot:debian-bookworm" in g.nodes
    assert g.nodes["xen-host-bookworm/hypervisor"].inputs["buildroot"] == \
        "buildroot:debian-bookworm"
    assert g.nodes["hypervisor"].inputs["tree"] == "tree:xen-4.20"
    assert g.nodes["xen-host-bookworm/hypervisor"].inputs["tree"] == "tree:xen-4.17"
    shared = [n for n, o in g.origins.items() if len(o) > 1]
    assert shared == []  # other sources, other releases: nothing in common
    assert len(g.nodes) == len(plan(new).nodes) + len(plan(old).nodes)


def test_matrix_build_of_two_fixture_recipes_exports_each(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    fx = tmp_path / "fx"
    shutil.copytree(FIXTURES, fx)
    (fx / "kernel2.yaml").write_text((fx / "kernel.yaml").read_text().replace(
        "name: mini-kernel", "name: mini-kernel-two").replace("extra.config", "dom0"))
    out = tmp_path / "out"
    argv = ["--cache-dir", str(tmp_path / "cache"), "build", str(fx / "kernel.yaml"),
            str(fx / "kernel2.yaml"), "--target", "tree:mini", "-o", str(out), "--plain"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "mini-kernel+mini-kernel-two: 2 built, 0 cached" in text  # the tree once
    assert (out / "mini-kernel" / "manifest.json").is_file()
    assert (out / "mini-kernel-two" / "manifest.json").is_file()


def test_a_matrix_refuses_two_recipes_of_one_name(tmp_path: Path) -> None:
    loaded = load_recipe(RECIPES / "xen-host.yaml")
    with pytest.raises(InputError, match="two recipes are named xen-host"):
        plan_many([loaded, loaded])


# -- the sandbox -------------------------------------------------------------------------

def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/bin", "usr/sbin", "usr/lib", "etc", "var/lib/dpkg"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "usr/bin/make").write_text("")
    return root


def test_sandbox_command_line(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    tree = tmp_path / "objects" / "tree"
    tree.mkdir(parents=True)
    box = Sandbox(root=root, release="debian/trixie", writable=[work, work / "src"],
                  readable=[tree])
    box.check_paths()
    argv = box.argv(["make", "-C", str(work / "src")], cwd=work)
    assert argv[:2] == ["bwrap", "--die-with-parent"] and "--unshare-net" in argv
    i = argv.index("/bin")
    assert argv[i - 2:i + 1] == ["--symlink", "usr/bin", "/bin"]
    assert ["--ro-bind", str(root / "usr"), "/usr"] == \
        argv[argv.index("/usr") - 2:argv.index("/usr") + 1]
    i = argv.index("--bind")
    assert argv[i:i + 3] == ["--bind", str(work), str(work)]
    assert argv.count(str(work / "src")) == 1  # inside a bound dir already: no second bind
    i = argv.index(str(tree))
    assert argv[i - 1:i + 2] == ["--ro-bind", str(tree), str(tree)]
    assert argv[-4:] == ["--", "make", "-C", str(work / "src")]
    assert box.find("make") == root / "usr/bin/make" and box.find("cc") is None


def test_a_program_the_buildroot_lacks_is_named_with_its_package(tmp_path: Path) -> None:
    box = Sandbox(root=_fake_root(tmp_path), release="debian/trixie")
    err = box.missing_program_error("bash")
    assert "the buildroot (debian/trixie) has no `bash`" in err.render()
    assert "the Debian package bash" in err.hint and "releases/debian-trixie.yaml" in err.hint
    why = box.explain_failure(["make[2]: bash: No such file or directory", "Error 127"])
    assert "lacks `bash`" in why and "Debian package bash" in why
    assert host_package_of("bash") == "bash"


def test_a_cache_below_a_hidden_dir_is_refused(tmp_path: Path) -> None:
    box = Sandbox(root=_fake_root(tmp_path), release="debian/trixie",
                  writable=[Path("/usr/local/xenforge-cache/work")])
    with pytest.raises(InputError, match="below /usr"):
        box.check_paths()


def test_sandbox_finds_programs_in_bound_dirs_and_the_buildroot(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "configure").write_text("#!/bin/sh\n")
    box = Sandbox(root=root, release="debian/trixie", writable=[work])
    assert box.find("./configure", cwd=work) == work / "configure"  # the work dir's
    assert box.find("./missing", cwd=work) is None
    assert box.find("/usr/bin/make") == root / "usr/bin/make"  # the buildroot's
    assert box.find(str(work / "configure")) == work / "configure"
