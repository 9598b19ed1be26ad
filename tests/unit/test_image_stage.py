"""The apt-repo stage (on tiny real .debs), the image stage's generated configs and the
planning of images and guests - without root, network or diskimage-builder runs."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from xenforge.cache.store import Cache
from xenforge.core.errors import StageFailed
from xenforge.plan.graph import Graph, plan
from xenforge.plan.images import IMAGE_ELEMENTS
from xenforge.recipe.load import load_recipe
from xenforge.stages.apt_repo import AptRepoOptions, AptRepoStage
from xenforge.stages.base import StageContext
from xenforge.stages.image import (
    GuestEntry,
    ImageOptions,
    ImageStage,
    block_device_config,
    xl_config,
)

REPO = Path(__file__).resolve().parents[2]
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-scanpackages") is None,
                                reason="dpkg-dev missing")


def make_deb(dest: Path, name: str, version: str, description: str = "test package") -> Path:
    root = dest / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Maintainer: test <t@example.org>\nDescription: {description}\n")
    (root / "usr" / "share" / name).mkdir(parents=True)
    (root / "usr" / "share" / name / "README").write_text(name)
    deb = dest / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, deb], check=True,
                   capture_output=True)
    shutil.rmtree(root)
    return deb


def ctx_for(tmp_path: Path, options: AptRepoOptions, inputs: dict[str, Path]) -> StageContext:
    out = tmp_path / "out"
    out.mkdir()
    return StageContext(node="apt-repo:test", node_id="0" * 64, options=options,
                        inputs=inputs, files={}, out=out, work=tmp_path / "work",
                        log=tmp_path / "log", cache=Cache(tmp_path / "cache"),
                        logger=logging.getLogger("test"))


@needs_dpkg
def test_apt_repo(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_deb(a, "xenforge-xen-utils", "4.17.5-1+xenforge1")
    make_deb(a, "xenforge-libxen-dev", "4.17.5-1+xenforge1")
    make_deb(b, "linux-image-6.1.0-xenforge", "6.1.176-1")
    ctx = ctx_for(tmp_path, AptRepoOptions(), {"deb0": a, "deb1": b})
    AptRepoStage().run(ctx)
    repo = ctx.out / "repo"
    index = (repo / "Packages").read_text()
    assert "Package: xenforge-xen-utils" in index
    assert "Package: linux-image-6.1.0-xenforge" in index
    assert "libxen-dev" not in index  # development packages stay out by default
    assert gzip.decompress((repo / "Packages.gz").read_bytes()).decode() == index
    release = (repo / "Release").read_text()
    assert "Origin: xenforge" in release and " Packages.gz" in release
    info = json.loads((ctx.out / "repo.json").read_text())
    assert {(p["name"], p["version"], p["input"]) for p in info["packages"]} == {
        ("xenforge-xen-utils", "4.17.5-1+xenforge1", "deb0"),
        ("linux-image-6.1.0-xenforge", "6.1.176-1", "deb1")}
    # the inputs are linked, never modified
    assert (repo / "linux-image-6.1.0-xenforge_6.1.176-1_amd64.deb").stat().st_ino == \
        (b / "linux-image-6.1.0-xenforge_6.1.176-1_amd64.deb").stat().st_ino


@needs_dpkg
def test_apt_repo_rejects_conflicting_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_deb(a, "same", "1.0")
    make_deb(b, "same", "1.0", description="other content, same name and version")
    ctx = ctx_for(tmp_path, AptRepoOptions(), {"deb0": a, "deb1": b})
    with pytest.raises(StageFailed, match=r"two different files claim to be same_1\.0_amd64"):
        AptRepoStage().run(ctx)


def test_apt_repo_input_without_debs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageFailed, match=r"has no \.deb files"):
        AptRepoStage().run(ctx_for(tmp_path, AptRepoOptions(), {"deb0": empty}))


def test_block_device_config_is_one_filesystem_without_partitions() -> None:
    cfg = yaml.safe_load(block_device_config("xf-host", "1234"))
    kinds = [next(iter(entry)) for entry in cfg]
    assert kinds == ["local_loop", "mkfs", "mount"]  # no partitioning: no device-mapper
    mkfs = cfg[1]["mkfs"]
    assert mkfs["type"] == "ext4" and mkfs["uuid"] == "1234" and mkfs["label"] == "xf-host"
    assert "^metadata_csum_seed" in mkfs["opts"]  # GRUB 2.06 cannot read that feature


@pytest.mark.parametrize("kind", ["pv", "pvh"])
def test_xl_config(kind: str) -> None:
    g = GuestEntry(name="web", type=kind, memory=300, vcpus=2, autostart=True)  # type: ignore[arg-type]
    info = {"xl": {"ramdisk": "initrd.img", "cmdline": "root=/dev/xvda ro console=hvc0"}}
    text = xl_config(g, info)
    assert f'type = "{kind}"' in text
    assert 'kernel = "/var/lib/xen/images/web/vmlinuz"' in text
    assert 'ramdisk = "/var/lib/xen/images/web/initrd.img"' in text
    assert 'cmdline = "root=/dev/xvda ro console=hvc0"' in text
    assert "memory = 300" in text and "vcpus = 2" in text
    assert "vdev=xvda" in text and "target=/var/lib/xen/images/web/disk.raw" in text
    assert 'vif = [ "bridge=xenbr0" ]' in text
    assert "ramdisk" not in xl_config(g, {"xl": {"cmdline": "x"}})
    assert "hap" not in text and "tsc_mode" not in text  # xl's defaults unless asked
    tuned = GuestEntry(name="web", type=kind, tsc_mode="native", hap=False)  # type: ignore[arg-type]
    text = xl_config(tuned, info)
    assert 'tsc_mode = "native"' in text
    assert ("hap = 0" in text) == (kind == "pvh")  # shadow paging is a PVH (HVM) setting


def test_image_options_are_strict() -> None:
    with pytest.raises(ValueError):
        ImageOptions.model_validate({"name": "x", "role": "dom0", "bogus": 1})
    with pytest.raises(ValueError):
        ImageOptions.model_validate({"name": "Bad Name", "role": "dom0"})
    opts = ImageOptions.model_validate({"name": "x", "role": "guest"})
    assert opts.formats == ("qcow2",) and opts.firmware == ("bios",)


def test_image_artifacts_cover_the_outputs() -> None:
    assert {"*.raw", "*.qcow2", "access_key", "image-info.json"} <= set(ImageStage.artifacts)
    assert ImageStage.heavy


def plan_with_images(recipe: Path) -> Graph:
    return plan(load_recipe(recipe))


def test_plan_host_with_guests() -> None:
    g = plan_with_images(REPO / "recipes" / "xen-host.yaml")
    host = g.nodes["image:xen-host"]
    assert host.stage == "image" and host.files == {"elements": IMAGE_ELEMENTS}
    assert g.nodes[host.inputs["repo"]].inputs == {"deb0": "xen-debs", "deb1": "kernel:dom0"}
    guests = [host.inputs["guest0"], host.inputs["guest1"]]
    assert guests == ["image:guest-pvh", "image:guest-pv"]
    for name in guests:
        assert g.nodes[name].options["role"] == "guest"
        assert g.nodes[g.nodes[name].inputs["repo"]].inputs == {"deb0": "kernel:guest"}
    # the guest recipes' kernel is the host recipe's: planned once
    assert sum(n.stage == "kernel" for n in g.nodes.values()) == 2
    opts = host.options
    assert [x["name"] for x in opts["guests"]] == ["guest-pvh", "guest-pv"]
    assert [x["type"] for x in opts["guests"]] == ["pvh", "pv"]
    assert opts["xen_cmdline"].startswith("console=com1")
    assert opts["kernel_cmdline"].startswith("console=hvc0")
    assert opts["firmware"] == ["bios", "uefi"] and opts["access"] is True
    ImageOptions.model_validate(opts)


def test_plan_guest_recipe_alone() -> None:
    g = plan_with_images(REPO / "recipes" / "guest-pvh.yaml")
    assert "hypervisor" not in g.nodes and "kernel:dom0" not in g.nodes
    assert g.nodes["image:guest-pvh"].inputs == {"repo": "apt-repo:guest-pvh"}


def test_a_guest_recipe_with_another_kernel_gets_its_own_nodes(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    for d in ("hypervisor", "kernel_patches"):
        (tmp_path / d).symlink_to(REPO / d)
    text = (recipes / "guest-pv.yaml").read_text()
    (recipes / "guest-pv.yaml").write_text(
        text.replace("kernels:\n  dom0: null", "kernels:\n  dom0: null\n  guest:\n"
                     "    base: defconfig"))
    g = plan_with_images(recipes / "xen-host.yaml")
    assert "kernel:guest@guest-pv" in g.nodes
    repo = g.nodes[g.nodes["image:guest-pv"].inputs["repo"]]
    assert repo.inputs == {"deb0": "kernel:guest@guest-pv"}
    assert g.nodes["image:guest-pvh"].inputs["repo"] != g.nodes["image:guest-pv"].inputs["repo"]


def test_dib_environment_is_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIB_RELEASE", "trixie")  # must not leak into the build
    monkeypatch.setenv("DIB_SOMETHING", "x")
    monkeypatch.setenv("ELEMENTS_PATH", "/elsewhere")
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    repo = tmp_path / "repo-node"
    (repo / "repo").mkdir(parents=True)
    opts = ImageOptions.model_validate({"name": "h", "role": "dom0", "release": "bookworm",
                                        "security_mirror": "http://mirror/debian-security"})
    work = tmp_path / "work"
    work.mkdir()
    ctx = StageContext(node="image:h", node_id="1" * 64, options=opts, inputs={"repo": repo},
                       files={"elements": IMAGE_ELEMENTS}, out=tmp_path / "out", work=work,
                       log=tmp_path / "log", cache=Cache(tmp_path / "cache"))
    env = ImageStage()._env(ctx, opts, {"fs_uuid": "u", "root_partuuid": "p", "label": "l"},
                            1000, tmp_path / "export")
    assert env["DIB_RELEASE"] == "bookworm"
    assert "DIB_SOMETHING" not in env
    assert env["DIB_DEBIAN_SECURITY_MIRROR"] == "http://mirror/debian-security"
    assert env["ELEMENTS_PATH"] == str(work / "elements")  # a private copy
    assert (work / "elements" / "xen-dom0" / "README.rst").is_file()
    assert env["TMPDIR"] == env["TMP_DIR"] and env["TMP_DIR"].startswith(str(work))
    assert env["DIB_IMAGE_CACHE"].startswith(str(tmp_path / "cache"))
    assert env["XENFORGE_APT_REPO"] == str(repo / "repo")
    assert env["http_proxy"] == "http://proxy:3128"
    assert not [k for k in env if not k.startswith(("DIB_", "XENFORGE_"))
                and k not in {"PATH", "ELEMENTS_PATH", "TMP_DIR", "TMPDIR", "http_proxy"}]
