"""Real Linux builds of the default recipe's line (6.12) through the kernel stage, in the
target's buildroot: linux-source from Debian's archive, xenforge's patch series,
tinyconfig + the line's fragments.

A dom0 kernel ([base, dom0]) and a guest kernel ([base, domu]) are built from ONE tree node;
the second build reuses the first one's objects through ccache. Outputs are cached in
``$XENFORGE_TEST_CACHE`` (see ``_xenbuild.py``), so a second run of this module is quick.
Cold: ~10 min for the first kernel on 2 cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _kernelbuild import LINE, build_kernel, dom0_kernel, fragment, guest_kernel, kernel_tree
from _xenbuild import Built
from _xenbuild import test_cache as _test_cache

from xenforge.cache import Cache
from xenforge.core import run as runner
from xenforge.lib.kconfig import read_config
from xenforge.lib.kconfig_index import KconfigRejected

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache() -> Cache:
    return _test_cache()


@pytest.fixture(scope="module")
def tree(cache: Cache) -> Built:
    return kernel_tree(cache)


@pytest.fixture(scope="module")
def stamp(tree: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file older than anything the kernel builds do: the tree must stay older."""
    path = tmp_path_factory.mktemp("stamp") / "stamp"
    path.touch()
    return path


@pytest.fixture(scope="module")
def dom0(cache: Cache, tree: Built, stamp: Path) -> Built:
    return dom0_kernel(cache, tree)


@pytest.fixture(scope="module")
def guest(cache: Cache, tree: Built, dom0: Built) -> Built:
    return guest_kernel(cache, tree)


def _newer_than(root: Path, stamp: Path) -> list[str]:
    found = runner.run(["find", str(root), "-newer", str(stamp), "-print", "-quit"],
                       capture=True).stdout
    return found.split()


def check_kernel(built: Built, expect_y: list[str]) -> dict[str, object]:
    out = built.out
    info: dict[str, object] = json.loads((out / "build-info.json").read_text())
    release = str(info["kernelrelease"])
    assert info["build_id"] == built.id
    assert release.startswith(f"{LINE.name.removeprefix('linux-')}.")
    assert release.endswith(f"-xenforge-{built.id[:8]}")
    # a bzImage: the x86 boot protocol's "HdrS" magic at 0x202
    image = (out / "vmlinuz").read_bytes()
    assert image[0x202:0x206] == b"HdrS" and len(image) > 1_000_000
    cfg = read_config(out / "config")
    for name in expect_y:
        assert cfg.get(name) == "y", name
    assert cfg["XENFORGE_BUILD_ID"] == f'"{built.id}"'
    assert cfg["LOCALVERSION"] == f'"-xenforge-{built.id[:8]}"'
    assert " xenforge_build_id_init" in (out / "System.map").read_text()
    # the Debian package: named after the release, with the kernel and the modules
    [deb] = [d for d in info["debs"] if str(d).startswith("linux-image-")]  # type: ignore[attr-defined]
    fields = runner.run(["dpkg-deb", "-f", str(out / str(deb)), "Package", "Version",
                         "Architecture"], capture=True).stdout
    assert f"Package: linux-image-{release}" in fields
    assert "Architecture: amd64" in fields
    listing = runner.run(["dpkg-deb", "-c", str(out / str(deb))], capture=True).stdout
    assert f"./boot/vmlinuz-{release}" in listing
    # below /usr (the line's builddeb patch): Debian 13 is merged-/usr, files in the aliased
    # /lib are a lintian error
    assert f"./usr/lib/modules/{release}/kernel/" in listing
    assert not re.search(r"^\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+\./lib/", listing, re.M), listing
    # modules installed (stripped) into out/modules, without links into the build dir
    moddir = out / "modules" / "lib" / "modules" / release
    assert (moddir / "modules.dep").is_file()
    assert not (moddir / "build").exists() and not (moddir / "build").is_symlink()
    return info


def test_dom0_kernel(dom0: Built, tree: Built) -> None:
    info = check_kernel(dom0, ["XEN_DOM0", "XEN_BACKEND", "XEN_BLKDEV_BACKEND",
                               "XEN_NETDEV_BACKEND", "XEN_GNTDEV", "XEN_DEV_EVTCHN",
                               "XEN_PRIVCMD", "XENFS", "XEN_PVH", "HVC_XEN"])
    release = str(info["kernelrelease"])
    moddir = dom0.out / "modules" / "lib" / "modules" / release
    assert list(moddir.rglob("bridge.ko")) and list(moddir.rglob("tun.ko"))


def test_guest_kernel_shares_the_tree(guest: Built, dom0: Built, tree: Built) -> None:
    check_kernel(guest, ["XEN_PV", "XEN_PVH", "XEN_BLKDEV_FRONTEND", "XEN_NETDEV_FRONTEND",
                         "HVC_XEN_FRONTEND", "XEN_BALLOON"])
    assert guest.id != dom0.id
    for built in (dom0, guest):
        key = json.loads((built.out.parent / "manifest.json").read_text())["key"]
        assert set(key["inputs"]) == {"tree", "buildroot"} and key["inputs"]["tree"] == tree.id


def test_builds_leave_the_input_tree_untouched(dom0: Built, guest: Built, tree: Built,
                                                stamp: Path) -> None:
    assert _newer_than(tree.out, stamp) == []


def test_fragment_with_an_unmet_dependency_fails_naming_it(cache: Cache, tree: Built,
                                                            tmp_path: Path) -> None:
    frag = tmp_path / "broken.config"
    frag.write_text("# CONFIG_XEN_BACKEND is not set\nCONFIG_XEN_NETDEV_BACKEND=y\n"
                    "CONFIG_XEN_NETDEV_BAKEND=y\n")
    with pytest.raises(KconfigRejected) as err:  # bad input (exit 2), as in every stage
        build_kernel(cache, tree, [fragment("base"), frag])
    msg = err.value.message
    assert "2 requested Kconfig options did not survive olddefconfig" in msg
    assert (f"{frag}:2: CONFIG_XEN_NETDEV_BACKEND=y was dropped by Kconfig "
            "(depends on: NETDEVICES && XEN_BACKEND; unmet: XEN_BACKEND") in msg
    assert f"{frag}:3: CONFIG_XEN_NETDEV_BAKEND=y was dropped by Kconfig: no Kconfig file " \
           "of this tree defines XEN_NETDEV_BAKEND" in msg
