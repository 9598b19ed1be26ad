"""The apt-repo stage (on tiny real .debs), the rootfs stage's generated configs, the disk
stage on small real ext4 images (debugfs, no root) and the planning of images and guests -
without root, network or diskimage-builder runs."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from stagectx import stage_context

from xenforge.core.data import data_dir
from xenforge.core.errors import InputError, StageFailed
from xenforge.lib.ext4 import Ext4Image
from xenforge.lib.xl import Guest, guest_config
from xenforge.plan import plan
from xenforge.plan.graph import Graph
from xenforge.recipe.load import load_recipe
from xenforge.stages.apt_repo import AptRepoOptions, AptRepoStage
from xenforge.stages.base import StageContext
from xenforge.stages.disk import DiskOptions, DiskStage, set_shell_vars
from xenforge.stages.rootfs import RootfsOptions, RootfsStage, block_device_config

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


def ctx_for(tmp_path: Path, options: AptRepoOptions, debs: list[Path]) -> StageContext:
    return stage_context(tmp_path, node="apt-repo:test", options=options,
                         inputs={"debs": tuple(debs)})


@needs_dpkg
def test_apt_repo(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_deb(a, "xenforge-xen-utils", "4.17.5-1+xenforge1")
    make_deb(a, "xenforge-libxen-dev", "4.17.5-1+xenforge1")
    make_deb(b, "linux-image-6.1.0-xenforge", "6.1.176-1")
    ctx = ctx_for(tmp_path, AptRepoOptions(), [a, b])
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
        ("xenforge-xen-utils", "4.17.5-1+xenforge1", "debs[0]"),
        ("linux-image-6.1.0-xenforge", "6.1.176-1", "debs[1]")}
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
    ctx = ctx_for(tmp_path, AptRepoOptions(), [a, b])
    with pytest.raises(StageFailed, match=r"two different files claim to be same_1\.0_amd64"):
        AptRepoStage().run(ctx)


def test_apt_repo_input_without_debs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageFailed, match=r"has no \.deb files"):
        AptRepoStage().run(ctx_for(tmp_path, AptRepoOptions(), [empty]))



def test_block_device_config_is_one_filesystem_without_partitions() -> None:
    cfg = yaml.safe_load(block_device_config("xf-host", "1234"))
    kinds = [next(iter(entry)) for entry in cfg]
    assert kinds == ["local_loop", "mkfs", "mount"]  # no partitioning: no device-mapper
    mkfs = cfg[1]["mkfs"]
    assert mkfs["type"] == "ext4" and mkfs["uuid"] == "1234" and mkfs["label"] == "xf-host"
    assert "^metadata_csum_seed" in mkfs["opts"]  # GRUB 2.06 cannot read that feature


def _guest(**kw: Any) -> Guest:
    base: dict[str, Any] = {"name": "web", "type": "pv", "memory": 300, "vcpus": 2,
                            "autostart": True, "bridge": "xenbr0", "hostname": "web",
                            "cmdline": "console=hvc0"}
    return Guest.model_validate({**base, **kw})


@pytest.mark.parametrize("kind", ["pv", "pvh"])
def test_xl_config(kind: str) -> None:
    text = guest_config(_guest(type=kind, hostname="web-1"), ramdisk=True)
    assert f'type = "{kind}"' in text
    assert 'kernel = "/var/lib/xen/images/web/vmlinuz"' in text
    assert 'ramdisk = "/var/lib/xen/images/web/initrd.img"' in text
    assert 'cmdline = "root=/dev/xvda ro console=hvc0 systemd.hostname=web-1"' in text
    assert "memory = 300" in text and "vcpus = 2" in text
    assert "vdev=xvda" in text and "target=/var/lib/xen/images/web/disk.raw" in text
    assert 'vif = [ "bridge=xenbr0" ]' in text
    assert "ramdisk" not in guest_config(_guest(type=kind), ramdisk=False)
    assert "hap" not in text and "tsc_mode" not in text  # xl's defaults unless asked
    text = guest_config(_guest(type=kind, tsc_mode="native", hap=False), ramdisk=True)
    assert 'tsc_mode = "native"' in text
    assert ("hap = 0" in text) == (kind == "pvh")  # shadow paging is a PVH (HVM) setting


def test_xl_config_of_a_pvhvm_guest() -> None:
    """PV drivers in an HVM guest: the device model, platform PCI on, the kernel booted
    directly, blkfront's xvda and a netfront-only vif."""
    text = guest_config(_guest(type="hvm", hap=True), ramdisk=True)
    assert 'type = "hvm"' in text and 'device_model_version = "qemu-xen"' in text
    assert 'firmware = "seabios"' in text and "xen_platform_pci = 1" in text
    assert 'kernel = "/var/lib/xen/images/web/vmlinuz"' in text and "cmdline = " in text
    assert "vdev=xvda" in text and 'vif = [ "bridge=xenbr0, type=vif" ]' in text
    assert 'serial = "pty"' in text and "vnc = 0" in text and "hap" not in text
    assert _guest(type="hvm").console_log == "/var/log/xen/console/guest-web.log"


def test_xl_config_of_an_unmodified_hvm_guest() -> None:
    """No PV drivers: platform PCI off, an emulated IDE disk and e1000, the guest's own
    bootloader (no kernel line), the serial port logged to a file in dom0."""
    g = _guest(type="hvm", pv_drivers=False, boot="disk", hap=False)
    text = guest_config(g, ramdisk=True)
    assert "xen_platform_pci = 0" in text and "hap = 0" in text
    assert "kernel = " not in text and "ramdisk" not in text and "cmdline" not in text
    assert "vdev=hda" in text and "type=ioemu, model=e1000" in text
    assert 'hdtype = "ahci"' in text
    assert g.console_log == "/var/log/xen/console/guest-web-serial.log"
    assert f'serial = "file:{g.console_log}"' in text


def test_plan_host_with_an_unmodified_hvm_guest() -> None:
    """A guest recipe with ``bootloader: true`` gets its own disk node (the disk stage in
    guest mode, GRUB for BIOS), which the host's disk takes as the guest's disk."""
    g = _plan(REPO / "recipes" / "xen-host-hvm.yaml")
    host = g.nodes["image:xen-host"]
    assert host.inputs["guests"] == ["image:guest-hvm"]
    disk = g.nodes["image:guest-hvm"]
    assert disk.stage == "disk" and disk.export and disk.inputs == {
        "rootfs": "rootfs:guest-hvm", "guests": []}
    gopts = DiskOptions.model_validate(disk.options)
    assert gopts.role == "guest" and gopts.firmware == ("bios",) and gopts.formats == ("raw",)
    assert "quiet" in gopts.linux_cmdline and gopts.grub_timeout == 0
    rootfs = g.nodes["rootfs:guest-hvm"]
    assert not rootfs.export and "repo" not in rootfs.inputs  # Debian's kernel, no xenforge
    assert "xenforge-boot" in rootfs.options["elements"]
    assert "linux-image-amd64" in rootfs.options["packages"]
    (guest,) = DiskOptions.model_validate(host.options).guests
    assert (guest.type, guest.pv_drivers, guest.boot) == ("hvm", False, "disk")
    # the dom0 rootfs is the one of every host recipe without an ISO: built once
    no_room = REPO / "tests" / "recipes" / "e2e" / "xen-host-no-room.yaml"
    assert g.nodes["rootfs:xen-host"].id == _plan(no_room).nodes["rootfs:xen-host"].id


ROOTFS = {"name": "x", "role": "dom0", "release": "bookworm", "mirror": "http://m/debian",
          "security_mirror": "http://m/debian-security", "access_user": "xenforge",
          "bridge": "xenbr0", "hostname": "x"}


def test_rootfs_options_are_strict() -> None:
    with pytest.raises(ValueError):
        RootfsOptions.model_validate({**ROOTFS, "bogus": 1})
    with pytest.raises(ValueError):
        RootfsOptions.model_validate({**ROOTFS, "name": "Bad Name"})
    with pytest.raises(ValueError):  # every setting comes from the planner: no defaults
        RootfsOptions.model_validate({"name": "x", "role": "guest"})
    assert RootfsOptions.model_validate(ROOTFS).size is None


def test_stage_artifacts_and_scheduling() -> None:
    assert {"*.ext4", "vmlinuz", "initrd.img", "image-info.json"} <= set(RootfsStage.artifacts)
    assert RootfsStage.late_inputs == ("repo",) and not RootfsStage.heavy
    assert {"*.raw", "*.qcow2", "access_key", "image-info.json"} <= set(DiskStage.artifacts)


def test_dib_environment_is_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIB_RELEASE", "trixie")  # must not leak into the build
    monkeypatch.setenv("DIB_SOMETHING", "x")
    monkeypatch.setenv("ELEMENTS_PATH", "/elsewhere")
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    opts = RootfsOptions.model_validate(ROOTFS)
    elements = data_dir("image_elements")
    ctx = stage_context(tmp_path, node="rootfs:x", options=opts,
                        files={"elements": (elements / "xen-dom0", elements / "xenforge-boot")})
    ctx.late = ("repo",)  # the packages come later: the element waits for a delivery
    work = ctx.work
    env = RootfsStage()._env(ctx, opts, {"fs_uuid": "u", "label": "l"}, tmp_path / "export",
                             work / "handoff")
    assert env["DIB_RELEASE"] == "bookworm"
    assert "DIB_SOMETHING" not in env
    assert env["DIB_DEBIAN_SECURITY_MIRROR"] == "http://m/debian-security"
    assert env["ELEMENTS_PATH"] == str(work / "elements")  # a private copy
    assert (work / "elements" / "xen-dom0" / "README.rst").is_file()
    # only the node's own folders: nothing else of image_elements/ can be used unhashed
    assert sorted(p.name for p in (work / "elements").iterdir()) == ["xen-dom0",
                                                                     "xenforge-boot"]
    assert env["TMPDIR"] == env["TMP_DIR"] and env["TMP_DIR"].startswith(str(work))
    assert env["DIB_IMAGE_CACHE"] == str(tmp_path / "scratch" / "dib" / "x")
    assert env["XENFORGE_APT_REPO"] == "" and env["XENFORGE_APT_REPO_HANDOFF"] == \
        str(work / "handoff") and int(env["XENFORGE_APT_REPO_WAIT"]) > 3600
    assert "XENFORGE_XEN_CMDLINE" not in env  # the disk's business, not the rootfs's
    assert env["http_proxy"] == "http://proxy:3128"
    assert not [k for k in env if not k.startswith(("DIB_", "XENFORGE_"))
                and k not in {"PATH", "ELEMENTS_PATH", "TMP_DIR", "TMPDIR", "http_proxy"}]
    for hook in (work / "elements").glob("*/*.d/*"):
        if hook.parent.name != "environment.d":  # those are sourced, not run
            assert hook.stat().st_mode & 0o111, f"{hook} is not executable in the copy"


# -- planning ----------------------------------------------------------------------------

def _plan(recipe: Path) -> Graph:
    return plan(load_recipe(recipe))


def test_plan_host_with_three_guests_of_one_guest_disk() -> None:
    g = _plan(REPO / "recipes" / "xen-host.yaml")
    host = g.nodes["image:xen-host"]
    assert host.stage == "disk"
    rootfs = g.nodes[host.inputs["rootfs"]]
    elements = data_dir("image_elements")
    assert rootfs.stage == "rootfs" and [p.name for p in rootfs.files["elements"]] == [
        "xen-dom0", "xenforge-boot", "xenforge-firstboot", "xenforge-sanitize",
        "xenforge-export", "xenforge-access", "xenforge-live",  # the ISO is made of it
        "xenforge-apt-repo"]  # element-deps followed
    assert all(p.parent == elements for p in rootfs.files["elements"])
    assert not rootfs.export  # the disk is the artifact
    assert g.nodes[rootfs.inputs["repo"]].inputs == {"debs": ["xen-debs", "kernel:dom0"]}
    # one guest disk (rootfs) for the three guests, built once
    assert host.inputs["guests"] == ["rootfs:guest"] * 3
    assert [n for n, node in g.nodes.items() if node.stage == "rootfs"] == \
        ["rootfs:guest", "rootfs:xen-host"]
    guest = g.nodes["rootfs:guest"]
    assert guest.options["role"] == "guest" and guest.export
    assert g.nodes[guest.inputs["repo"]].inputs == {"debs": ["kernel:guest"]}
    # the guest recipe's kernel is the host recipe's: planned once
    assert sum(n.stage == "kernel" for n in g.nodes.values()) == 2
    opts = DiskOptions.model_validate(host.options)
    assert [(x.name, x.type, x.hostname) for x in opts.guests] == [
        ("guest-pvh", "pvh", "guest-pvh"), ("guest-pv", "pv", "guest-pv"),
        ("guest-pvhvm", "hvm", "guest-pvhvm")]
    pvhvm = opts.guests[2]
    assert pvhvm.pv_drivers and pvhvm.boot == "kernel" and not pvhvm.hap  # shadow: TCG
    assert {x.bridge for x in opts.guests} == {"xenbr0"}
    assert opts.xen_cmdline.startswith("console=com1") and "dom0_mem=" in opts.xen_cmdline
    assert opts.kernel_cmdline.startswith("console=hvc0")
    assert opts.firmware == ("bios", "uefi") and rootfs.options["access"] is True
    RootfsOptions.model_validate(rootfs.options)


def _host_variant(tmp_path: Path, old: str, new: str) -> Path:
    recipes = tmp_path / "recipes"
    if not recipes.exists():
        shutil.copytree(REPO / "recipes", recipes)
        for d in ("hypervisor", "kernel_patches"):
            (tmp_path / d).symlink_to(REPO / d)
    host = recipes / "xen-host.yaml"
    text = host.read_text()
    assert old in text
    host.write_text(text.replace(old, new, 1))
    return host


def _changed(before: Graph, after: Graph) -> set[str]:
    assert before.nodes.keys() == after.nodes.keys()
    return {n for n in before.nodes if before.nodes[n].id != after.nodes[n].id}


def test_dom0_mem_reruns_the_disk_and_nothing_upstream(tmp_path: Path) -> None:
    before = _plan(REPO / "recipes" / "xen-host.yaml")
    base = _host_variant(tmp_path, "extends: [base.yaml]", "extends: [base.yaml]").parent
    (base / "base.yaml").write_text((base / "base.yaml").read_text().replace(
        "dom0_mem=1024M,max:1024M", "dom0_mem=1536M,max:1536M"))
    # the disk and the ISO boot with it; no diskimage-builder run
    assert _changed(before, _plan(base / "xen-host.yaml")) == {"image:xen-host", "iso:xen-host"}


@pytest.mark.parametrize("old,new,iso", [
    ("memory: 256\n    autostart: true\n    # both",
     "memory: 384\n    autostart: true\n    # both", True),  # the ISO carries the guests
    ("size: 8G", "size: 10G", False),
    ("formats: [raw, qcow2]", "formats: [qcow2]", False),
])
def test_machine_settings_rerun_only_the_disk(tmp_path: Path, old: str, new: str,
                                              iso: bool) -> None:
    before = _plan(REPO / "recipes" / "xen-host.yaml")
    assert _changed(before, _plan(_host_variant(tmp_path, old, new))) == \
        {"image:xen-host", *(["iso:xen-host"] if iso else [])}


def test_plan_guest_recipe_alone() -> None:
    g = _plan(REPO / "recipes" / "guest.yaml")
    assert "hypervisor" not in g.nodes and "kernel:dom0" not in g.nodes
    assert list(g.nodes)[-1] == "rootfs:guest"  # a guest's disk is its rootfs
    assert g.nodes["rootfs:guest"].inputs == {"repo": "apt-repo:guest"}


def test_a_guest_recipe_with_another_kernel_gets_its_own_nodes(tmp_path: Path) -> None:
    host = _host_variant(tmp_path, "recipe: guest.yaml\n    type: pv\n",
                         "recipe: guest-big.yaml\n    type: pv\n")
    text = (host.parent / "guest.yaml").read_text()
    (host.parent / "guest-big.yaml").write_text(
        text.replace("kernels:\n  dom0: null", "kernels:\n  dom0: null\n  guest:\n"
                     "    base: defconfig"))
    g = _plan(host)
    assert "kernel:guest-2" in g.nodes  # the same key, other settings: its own node
    disks = g.nodes["image:xen-host"].inputs["guests"]
    assert disks[0] != disks[1]
    assert g.nodes[g.nodes[disks[1]].inputs["repo"]].inputs == {"debs": ["kernel:guest-2"]}


def test_a_guest_bridge_the_host_lacks_is_an_error(tmp_path: Path) -> None:
    from xenforge.core.errors import ValidationFailed

    host = _host_variant(tmp_path, "type: pv\n", "type: pv\n    bridge: br-other\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(host)
    assert "no bridge 'br-other'" in exc.value.render() and "xenbr0" in exc.value.render()


# -- the disk stage on small real filesystems --------------------------------------------

def _mkfs(path: Path, tree: Path, size_mib: int) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, "-O", "^metadata_csum_seed",
                    "-U", "0e0e0e0e-0000-4000-8000-000000000001", path, f"{size_mib}M"],
                   check=True, capture_output=True)


def _rootfs_out(tmp_path: Path, name: str, role: str) -> Path:
    """A rootfs node's output as the stage writes it, around a tiny ext4 filesystem."""
    tree, out = tmp_path / f"{name}-tree", tmp_path / f"{name}-out"
    for d in ("etc/default", "usr/local/bin", "boot/grub", "var/lib/xen/images", "etc/xen/auto"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/default/xenforge-boot").write_text(
        '# settings\nROOT_FS_UUID="0e0e0e0e-0000-4000-8000-000000000001"\nROOT_PARTUUID=""\n'
        'XEN_CMDLINE=""\nKERNEL_CMDLINE=""\nLINUX_CMDLINE=""\nGRUB_TIMEOUT=""\n')
    shutil.copy(data_dir("image_elements") / "xenforge-boot/bin/xenforge-grub-config",
                tree / "usr/local/bin/xenforge-grub-config")
    out.mkdir()
    _mkfs(out / f"{name}.ext4", tree, 64)
    (out / "vmlinuz").write_bytes(b"kernel" * 1000)
    (out / "initrd.img").write_bytes(b"initrd" * 1000)
    (out / "access_key").write_text("private")
    used = Ext4Image(out / f"{name}.ext4").usage()
    (out / "image-info.json").write_text(json.dumps({
        "name": name, "role": role, "fs_uuid": "0e0e0e0e-0000-4000-8000-000000000001",
        "fs": {"file": f"{name}.ext4", "size": used.size, "used": used.used},
        "kernel_version": "6.1.0-test", "bridge": "xenbr0"}))
    return out


def _disk_options(**kw: Any) -> DiskOptions:
    guests = [_guest(name="guest-a", hostname="guest-a", autostart=True).model_dump(),
              _guest(name="guest-b", hostname="guest-b", autostart=False,
                     type="pvh").model_dump()]
    base: dict[str, Any] = {"name": "host", "size": 256, "formats": ["raw"],
                            "firmware": ["bios", "uefi"], "esp_size": 33,
                            "xen_cmdline": "console=com1 dom0_mem=777M",
                            "kernel_cmdline": "console=hvc0", "linux_cmdline": "console=ttyS0",
                            "grub_timeout": 2, "guests": guests}
    return DiskOptions.model_validate({**base, **kw})


def _cat(image: Path, offset: int, path: str) -> str:
    res = subprocess.run(["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
                         capture_output=True, text=True, check=True)
    return res.stdout


needs_e2fs = pytest.mark.skipif(shutil.which("debugfs") is None, reason="e2fsprogs missing")


@needs_e2fs
def test_disk_stage_writes_settings_and_guests_without_mounting(tmp_path: Path) -> None:
    dom0 = _rootfs_out(tmp_path, "host", "dom0")
    guest = _rootfs_out(tmp_path, "guest", "guest")
    ctx = stage_context(tmp_path, node="image:host", options=_disk_options(),
                        inputs={"rootfs": dom0, "guests": (guest, guest)})
    DiskStage().run(ctx)
    info = json.loads((ctx.out / "image-info.json").read_text())
    raw = ctx.out / "host.raw"
    assert raw.stat().st_size == 256 << 20
    root = next(p for p in info["disk"]["partitions"] if p["name"] == "root")
    assert [p["name"] for p in info["disk"]["partitions"]] == ["bios", "esp", "root"]
    # the boot settings of this disk, made by the image's own generator
    cfg = _cat(raw, root["start"], "/boot/grub/xenforge-boot.cfg")
    assert "set xenforge_xen='console=com1 dom0_mem=777M'" in cfg
    assert f"set xenforge_root='root=PARTUUID={root['guid'].lower()}'" in cfg
    assert "set timeout=2" in cfg
    settings = _cat(raw, root["start"], "/etc/default/xenforge-boot")
    assert 'XEN_CMDLINE="console=com1 dom0_mem=777M"' in settings
    # each guest: its own copy of the one guest disk, its kernel, its xl config
    for name in ("guest-a", "guest-b"):
        assert _cat(raw, root["start"], f"/var/lib/xen/images/{name}/vmlinuz") == \
            "kernel" * 1000
        xl = _cat(raw, root["start"], f"/etc/xen/{name}.cfg")
        assert f"systemd.hostname={name}" in xl and f'name = "{name}"' in xl
    listing = subprocess.run(["debugfs", "-R", "ls -l /etc/xen/auto",
                              f"{raw}?offset={root['start']}"], capture_output=True,
                             text=True, check=True).stdout
    assert "guest-a.cfg" in listing and "guest-b.cfg" not in listing  # autostart only
    subprocess.run(["e2fsck", "-fn", f"{raw}?offset={root['start']}"], check=True,
                   capture_output=True)
    assert [g["name"] for g in info["guests"]] == ["guest-a", "guest-b"]
    assert info["xen_cmdline"] == "console=com1 dom0_mem=777M" and info["bridge"] == "xenbr0"
    assert (ctx.out / "access_key").read_text() == "private"


@needs_e2fs
def test_disk_too_small_for_its_guests_names_the_size_to_ask_for(tmp_path: Path) -> None:
    dom0 = _rootfs_out(tmp_path, "host", "dom0")
    guest = _rootfs_out(tmp_path, "guest", "guest")
    ctx = stage_context(tmp_path, node="image:host", options=_disk_options(size=64),
                        inputs={"rootfs": dom0, "guests": (guest, guest)})
    with pytest.raises(InputError, match="too small") as exc:
        DiskStage().run(ctx)
    assert "images.host.size" in exc.value.hint


def test_disk_refuses_a_quote_in_a_command_line() -> None:
    with pytest.raises(ValueError, match="may not contain"):
        _disk_options(xen_cmdline='console=com1" memory = 99999')


def test_shell_settings_are_replaced_in_place() -> None:
    text = 'A="1"\n# comment\nB="2"\n'
    assert set_shell_vars(text, {"B": "x y", "C": "3"}) == 'A="1"\n# comment\nB="x y"\nC="3"\n'


def test_ctx_late_input_labels_are_known(tmp_path: Path) -> None:
    ctx: StageContext = stage_context(tmp_path, node="rootfs:x", options=None)
    ctx.late = ("repo",)
    assert ctx.has_input("repo") and not ctx.has_input("other")
    ctx.waiter = lambda label, idles: tmp_path / f"built-{label}"
    assert ctx.input("repo") == tmp_path / "built-repo"  # waits, then remembers
    assert ctx.inputs["repo"] == tmp_path / "built-repo"
