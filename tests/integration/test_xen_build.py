"""Build the default recipe's Xen through the stages (source -> tree -> hypervisor / toolstack
-> xen-debs, in the target release's buildroot) and check what they produce; install the
packages into a chroot of the target release.

Outputs are cached in $XENFORGE_TEST_CACHE (default /var/tmp/xenforge-test-cache): the first
run compiles (minutes), later runs reuse the nodes. Compiler-heavy work takes
/tmp/xenforge-heavy.lock.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
from pathlib import Path

import _xenbuild as xb
import pytest

from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.lib import kconfig

pytestmark = pytest.mark.slow

MIRROR = "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def cache() -> xb.Cache:
    return xb.test_cache()


@pytest.fixture(scope="module")
def tree(cache: xb.Cache) -> xb.Built:
    return xb.xen_tree(cache)


@pytest.fixture(scope="module")
def hyp(cache: xb.Cache, tree: xb.Built) -> xb.Built:
    return xb.hypervisor(cache, tree)


@pytest.fixture(scope="module")
def tools(cache: xb.Cache, tree: xb.Built) -> xb.Built:
    return xb.toolstack(cache, tree)


@pytest.fixture(scope="module")
def debs(cache: xb.Cache, hyp: xb.Built, tools: xb.Built) -> xb.Built:
    return xb.xen_debs(cache, hyp, tools)


def is_pe32_plus(path: Path) -> bool:
    data = path.read_bytes()[:4096]
    if data[:2] != b"MZ":
        return False
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe:pe + 4] != b"PE\0\0":
        return False
    (magic,) = struct.unpack_from("<H", data, pe + 24)  # optional header magic
    return bool(magic == 0x20B)


# -- hypervisor --------------------------------------------------------------------------

def test_hypervisor_outputs(hyp: xb.Built) -> None:
    info = xb.read_json(hyp.out / "build-info.json")
    # compiled by the target release's gcc (the buildroot's), not the host's
    br = xb.read_json(xb.buildroot(xb.test_cache()).out / "buildroot.json")["packages"]
    gcc = next(v for name, v in br.items() if re.fullmatch(r"gcc-\d+", name))
    assert f"(Debian {gcc})" in info["compiler"], (info["compiler"], gcc)
    assert hyp.id.startswith(info["build_id"]) and len(info["build_id"]) >= 6
    assert info["version"] == xb.load_spec()["version"]
    assert info["extraversion"] == f".{info['version'].split('.')[2]}+{info['build_id']}"
    assert "0001-xen-build-tag-in-version-and-boot-log.patch" in info["patches"]

    image = gzip.decompress((hyp.out / "xen.gz").read_bytes())
    assert f"{info['version'].split('.', 2)[2]}+{info['build_id']}".encode() in image
    assert info["build_id"].encode() in image
    assert (hyp.out / "xen-syms").read_bytes()[:4] == b"\x7fELF"
    assert is_pe32_plus(hyp.out / "xen.efi")
    assert info["build_id"].encode() in (hyp.out / "xen.efi").read_bytes()

    # every option of the spec's fragment is in the final configuration
    final = kconfig.read_config(hyp.out / "xen.config")
    spec = xb.load_spec()
    for frag in spec["config"]:
        requested = kconfig.parse_fragment(xb.SPEC.parent / frag)
        assert requested, frag
        assert kconfig.verify({s.name: s for s in requested}, final) == []
    assert final.get("DEBUG", "n") == "n"


def test_dropped_kconfig_option_is_a_clear_error(cache: xb.Cache, tree: xb.Built,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "needs-guest.config"
    bad.write_text("# PV shim support needs CONFIG_XEN_GUEST, which nothing enables\n"
                   "CONFIG_PV_SHIM=y\nCONFIG_NO_SUCH_OPTION=y\n")
    before = set(cache.objects_dir.glob("*/*"))
    with pytest.raises(InputError) as err:
        xb.hypervisor(cache, tree, extra_fragments=[bad], build_id="droptest")
    text = err.value.render()
    assert "needs-guest.config:2: CONFIG_PV_SHIM=y was dropped" in text
    assert "XEN_GUEST" in text  # the unmet dependency is named
    assert "needs-guest.config:3: CONFIG_NO_SUCH_OPTION=y was dropped" in text
    # the spec's own options all survived (its file may be named as the reason, not listed)
    assert not re.search(r"^\s*xen-4\.17\.config:\d+: CONFIG_", text, re.M), text
    assert set(cache.objects_dir.glob("*/*")) == before  # nothing was committed


def test_broken_patch_stops_before_building(cache: xb.Cache, tmp_path: Path) -> None:
    patches = tmp_path / "patches"
    shutil.copytree(xb.SPEC.parent / xb.load_spec()["patches"], patches)
    (patches / "0002-broken.patch").write_text(
        "--- a/xen/common/version.c\n+++ b/xen/common/version.c\n"
        "@@ -1,3 +1,3 @@\n-this line is not in version.c\n+neither is this one\n"
        " nor this\n")
    with (patches / "series").open("a") as f:
        f.write("0002-broken.patch\n")
    xb.xen_source(cache)  # the failing node's input: built (or found) first
    before = set(cache.objects_dir.glob("*/*"))
    with pytest.raises(XenforgeError) as err:
        xb.xen_tree(cache, patches=patches)
    text = err.value.render()
    assert "0002-broken.patch" in text
    assert "xen/common/version.c" in text
    assert set(cache.objects_dir.glob("*/*")) == before


def test_hypervisor_is_cached(cache: xb.Cache, tree: xb.Built, hyp: xb.Built) -> None:
    again = xb.hypervisor(cache, tree)
    assert again.cached and again.id == hyp.id


# -- toolstack ---------------------------------------------------------------------------

def test_toolstack_outputs(tools: xb.Built) -> None:
    root = tools.out / "install"
    for rel in ("usr/sbin/xl", "usr/sbin/xenstored", "usr/sbin/xenconsoled",
                "usr/lib/xen/bin/xen-init-dom0", "etc/xen/scripts/vif-bridge",
                "etc/init.d/xencommons", "usr/lib/systemd/system/xenstored.service",
                "usr/lib/systemd/system/xenconsoled.service",
                f"usr/lib/x86_64-linux-gnu/libxenlight.so.{xb.SERIES}.0"):
        assert (root / rel).exists(), rel
    assert not (root / "usr" / "local").exists()  # python modules in dist-packages
    assert list((root / "usr/lib/python3/dist-packages").glob("xen/lowlevel/xc*.so"))
    unit = (root / "usr/lib/systemd/system/xen-qemu-dom0-disk-backend.service").read_text()
    assert "/usr/libexec/xen-qemu-system-i386" in unit  # the spec's device model
    info = xb.read_json(tools.out / "build-info.json")
    assert info["configure"] == xb.load_spec()["toolstack"]["configure"]


# -- packages ----------------------------------------------------------------------------

def deb_field(deb: Path, field: str) -> str:
    return runner.run(["dpkg-deb", "-f", deb, field], capture=True).stdout.strip()


def test_debs_fields_and_lintian(debs: xb.Built, hyp: xb.Built, tools: xb.Built) -> None:
    meta = xb.read_json(debs.out / "packages.json")
    names = {p["name"]: p for p in meta["packages"]}
    assert set(names) == {"xenforge-xen-hypervisor", "xenforge-xen-utils",
                          "xenforge-libxen-dev"}
    spec = xb.load_spec()
    src_version = (f"{spec['package_version']}-0" if spec.get("package_version")
                   else spec["source"]["apt"].split("=", 1)[1])
    hyp_id = xb.read_json(hyp.out / "build-info.json")["build_id"]
    tools_id = xb.read_json(tools.out / "build-info.json")["build_id"]
    assert names["xenforge-xen-hypervisor"]["version"] == f"{src_version}+xenforge1~{hyp_id}"
    assert names["xenforge-xen-utils"]["version"] == f"{src_version}+xenforge1~{tools_id}"

    hv = debs.out / names["xenforge-xen-hypervisor"]["file"]
    listing = runner.run(["dpkg-deb", "-c", hv], capture=True).stdout
    assert f"./boot/xen-{spec['version']}-xenforge.gz" in listing
    assert "./etc/default/grub.d/xenforge-xen.cfg" in listing
    assert f"xen-hypervisor-{xb.SERIES}-amd64" in deb_field(hv, "Conflicts")

    utils = debs.out / names["xenforge-xen-utils"]["file"]
    depends = deb_field(utils, "Depends")
    assert re.search(r"\blibc6 \(>= ", depends)  # computed by dpkg-shlibdeps
    assert "libyajl2" in depends and "xenforge-xen-utils" not in depends
    provides = deb_field(utils, "Provides")
    assert f"libxenmisc{xb.SERIES} (= {src_version}+xenforge1~{tools_id})" in provides
    # packaged in the target's buildroot: the libc6 it asks for is the target's
    br = xb.read_json(xb.buildroot(xb.test_cache()).out / "buildroot.json")
    wanted = re.search(r"\blibc6 \(>= ([^)]+)\)", depends)
    assert wanted is not None
    assert runner.run(["dpkg", "--compare-versions", wanted.group(1), "le",
                       br["packages"]["libc6"]], check=False).returncode == 0

    ulist = runner.run(["dpkg-deb", "-c", utils], capture=True).stdout
    assert "./usr/sbin/xl" in ulist and "./etc/init.d/" not in ulist
    assert "__pycache__" not in ulist
    scripts = runner.run(["dpkg-deb", "-I", utils, "postinst"], capture=True).stdout
    assert "deb-systemd-helper enable" in scripts and "xenstored.service" in scripts

    report = (debs.out / "lintian.txt").read_text()
    assert not re.search(r"^E: ", report, re.M), report
    assert "0 error(s)" in report


# -- install into Debian 12 --------------------------------------------------------------

def debootstrap_tarball(cache: xb.Cache) -> Path:
    """A minbase root of the target release as a tarball in the test cache (built once,
    under the lock)."""
    tarball = cache.root / "debootstrap" / f"{xb.RELEASE}-minbase.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.parent / "root.tmp"
    with xb.heavy_lock():
        if tarball.is_file():
            return tarball
        shutil.rmtree(tmp, ignore_errors=True)
        runner.run(["debootstrap", "--variant=minbase", xb.RELEASE, tmp, MIRROR],
                   timeout=1800)
        runner.run(["tar", "-C", tmp, "-cf", f"{tarball}.tmp", "."])
        os.replace(f"{tarball}.tmp", tarball)
        shutil.rmtree(tmp, ignore_errors=True)
    return tarball


def chroot(root: Path, *cmd: str, check: bool = True) -> runner.Result:
    return runner.run(["chroot", root, *cmd], capture=True, check=check, timeout=1800,
                      env={"DEBIAN_FRONTEND": "noninteractive"})


@pytest.mark.root
def test_debs_install_on_the_target_replacing_debians_xen(cache: xb.Cache, debs: xb.Built,
                                                        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    root = tmp_path / "root"
    root.mkdir()
    runner.run(["tar", "-C", root, "-xf", debootstrap_tarball(cache)])
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    chroot(root, "apt-get", "update", "-q")
    # Debian's own Xen toolstack first: ours must replace it
    chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
           f"xen-utils-{xb.SERIES}")
    pkgs = root / "tmp" / "debs"
    pkgs.mkdir()
    for deb in debs.out.glob("*.deb"):
        shutil.copy(deb, pkgs)
    res = chroot(root, "sh", "-c", "apt-get install -y -q --no-install-recommends "
                                   "/tmp/debs/*.deb")
    assert "xenforge-xen-utils" in res.stdout
    status = chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Status}\\n").stdout
    for name in ("xenforge-xen-hypervisor", "xenforge-xen-utils", "xenforge-libxen-dev"):
        assert f"{name} install ok installed" in status, status
    for gone in (f"xen-utils-{xb.SERIES}", "xen-utils-common", f"libxenmisc{xb.SERIES}",
                 "xenstore-utils"):
        assert not re.search(rf"^{re.escape(gone)} install ok installed", status, re.M), gone
    owner = chroot(root, "dpkg", "-S", "/usr/sbin/xl").stdout
    assert owner.startswith("xenforge-xen-utils:"), owner
    assert (root / "boot" / f"xen-{xb.load_spec()['version']}-xenforge.gz").is_file()
    # the postinst enabled the dom0 services (systemd is not running in a chroot)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("xenstored.service", "xenconsoled.service", "xen-init-dom0.service"):
        assert (wants / unit).is_symlink(), unit
    # the libraries load: xl runs (and fails only for want of a hypervisor)
    xl = chroot(root, "sh", "-c", "xl info 2>&1", check=False)
    assert "error while loading shared libraries" not in xl.stdout
    # Debian's device model accepts our libraries (versioned Provides)
    sim = chroot(root, "apt-get", "install", "-s", "-q", "qemu-system-xen")
    assert "Inst qemu-system-xen" in sim.stdout
    assert not re.search(r"^Remv xenforge", sim.stdout, re.M), sim.stdout
