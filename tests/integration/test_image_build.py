"""Real image builds (diskimage-builder, root) of the default recipe: its guest disk (one
rootfs for both guests) and the dom0 disk carrying two copies of it, built from the
recipe's own packages (Xen and kernels from source, through the planner and the executor,
in the test cache shared with the e2e test).

Checks what the images hold: the guest disk is one ext4 filesystem with a small initramfs,
the dom0 disk's partitions, the packages of the local repository installed, the guests'
xl configs, the access key; and that a changed dom0_mem only reassembles the disk.
Booting them (SeaBIOS and OVMF, xl list, package versions, guests) is the e2e test's job
(``tests/e2e/test_main_job.py``), on the same cache entries. A second test interrupts image
builds in the chroot phase and checks that no loop device, mount or chroot process is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import _xenbuild as xb
import pytest

from xenforge.cache import Cache
from xenforge.core import leftovers
from xenforge.plan import plan
from xenforge.recipe.load import load_recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root"),
    pytest.mark.skipif(shutil.which("disk-image-create") is None
                       and not (Path(sys.prefix) / "bin" / "disk-image-create").exists(),
                       reason="no diskimage-builder (disk-image-create)"),
]



@pytest.fixture(scope="module")
def cache() -> Cache:
    return xb.test_cache()


@pytest.fixture(scope="module")
def built(cache: Cache) -> dict[str, xb.Built]:
    start = time.monotonic()
    nodes = xb.recipe_build(cache, ["image:xen-host"])
    print(f"\nimage build: {time.monotonic() - start:.0f}s "
          + ", ".join(f"{n} {'cached' if b.cached else f'{b.seconds:.0f}s'}"
                      for n, b in nodes.items() if n.startswith(("image", "rootfs", "apt"))))
    assert not leftovers.remaining(cache.work_dir), "a build left mounts/loops behind"
    return nodes


def test_guest_disk(built: dict[str, xb.Built]) -> None:
    out = built["rootfs:guest"].out
    info = xb.read_json(out / "image-info.json")
    assert info["role"] == "guest" and (out / "guest.ext4").is_file()
    assert (out / "vmlinuz").is_file()
    assert info["os_release"]["VERSION_CODENAME"] == xb.RELEASE
    # the guest kernel is the recipe's, from the local repository, and installed
    assert [p["name"] for p in info["xenforge_packages"]] == [
        f"linux-image-{info['kernel_version']}"]
    assert all(p["installed"] for p in info["xenforge_packages"]), info["xenforge_packages"]
    # PV guests get their initramfs unpacked into their own memory: it must stay small
    if (out / "initrd.img").exists():
        assert (out / "initrd.img").stat().st_size < 16 << 20
    # the disk is one ext4 filesystem (the guest's xvda) with the requested UUID
    blkid = subprocess.run(["blkid", "-o", "export", out / "guest.ext4"], check=True,
                           capture_output=True, text=True).stdout
    assert "TYPE=ext4" in blkid and f"UUID={info['fs_uuid']}" in blkid
    # one image, many machines: identity is made at first boot
    for path, want in (("/etc/machine-id", "uninitialized\n"),):
        assert _cat(out / "guest.ext4", path) == want
    assert "ssh_host_" not in _ls(out / "guest.ext4", "/etc/ssh")


def test_dom0_image(built: dict[str, xb.Built]) -> None:
    out = built["image:xen-host"].out
    info = xb.read_json(out / "image-info.json")
    repo = xb.read_json(built["apt-repo:xen-host"].out / "repo.json")
    assert built["rootfs:xen-host"].seconds > 0 or built["rootfs:xen-host"].cached
    assert {p["name"]: p["version"] for p in repo["packages"]} == {
        p["name"]: p["version"] for p in info["xenforge_packages"]}
    for p in info["xenforge_packages"]:
        assert p["installed"] and info["packages"][p["name"]] == p["version"], p
    names = {p["name"] for p in info["xenforge_packages"]}
    assert {"xenforge-xen-hypervisor", "xenforge-xen-utils"} <= names
    assert f"linux-image-{info['kernel_version']}" in names
    assert info["hypervisors"], "no /boot/xen*.gz in the image"
    assert [p["name"] for p in info["disk"]["partitions"]] == ["bios", "esp", "root"]
    assert info["firmware"] == ["bios", "uefi"]
    assert (out / "xen-host.raw").is_file() and (out / "xen-host.qcow2").is_file()
    assert (out / "access_key").stat().st_mode & 0o077 == 0
    assert [(g["name"], g["type"], g["image"]) for g in info["guests"]] == [
        ("guest-pvh", "pvh", "guest"), ("guest-pv", "pv", "guest"),
        ("guest-pvhvm", "hvm", "guest")]
    root = next(p for p in info["disk"]["partitions"] if p["name"] == "root")
    fs = f"{out / 'xen-host.raw'}?offset={root['start']}"
    assert 'device_model_version = "qemu-xen"' in _cat(fs, "/etc/xen/guest-pvhvm.cfg")
    for g in ("guest-pvh", "guest-pv", "guest-pvhvm"):
        assert f"systemd.hostname={g}" in _cat(fs, f"/etc/xen/{g}.cfg")
        assert "disk.raw" in _ls(fs, f"/var/lib/xen/images/{g}")
    assert "dom0_mem=" in _cat(fs, "/boot/grub/xenforge-boot.cfg")
    assert "source /boot/grub/xenforge-boot.cfg" in _cat(fs, "/boot/grub/grub.cfg")
    # the access user lingers: its user manager starts at boot, not on the first login
    assert "xenforge" in _ls(fs, "/var/lib/systemd/linger")
    print("\nsizes: " + ", ".join(f"{k} {v['size'] >> 20} MiB ({v['allocated'] >> 20} MiB "
                                  "used)" for k, v in info["files"].items()))


def _cat(image: Path | str, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], check=True,
                          capture_output=True, text=True).stdout


def _ls(image: Path | str, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"ls {path}", str(image)], check=True,
                          capture_output=True, text=True).stdout


def test_a_changed_dom0_mem_reassembles_only_the_disk(built: dict[str, xb.Built],
                                                      cache: Cache, tmp_path: Path) -> None:
    """The command lines are the disk's: a new dom0_mem reruns the disk stage (seconds) and
    nothing upstream of it, diskimage-builder least of all."""
    recipes = tmp_path / "recipes"
    shutil.copytree(xb.REPO / "recipes", recipes)
    for d in ("hypervisor", "kernel_patches"):
        (tmp_path / d).symlink_to(xb.REPO / d)
    base = recipes / "base.yaml"
    base.write_text(base.read_text().replace("dom0_mem=1024M,max:1024M",
                                             "dom0_mem=1100M,max:1100M"))
    # the shared test cache may hold this variant from an earlier run: it must be made now
    variant = plan(load_recipe(recipes / "xen-host.yaml")).nodes["image:xen-host"].id
    with cache.lock(variant):
        cache.discard(variant)
    start = time.monotonic()
    nodes = xb.recipe_build(cache, ["image:xen-host"], recipe=recipes / "xen-host.yaml")
    took = time.monotonic() - start
    rebuilt = sorted(n for n, b in nodes.items() if not b.cached)
    assert rebuilt == ["image:xen-host"], rebuilt
    print(f"\ndom0_mem change: {took:.1f}s, the disk stage {nodes['image:xen-host'].seconds:.1f}s")
    info = xb.read_json(nodes["image:xen-host"].out / "image-info.json")
    assert "dom0_mem=1100M" in info["xen_cmdline"]


# -- interrupting a build ------------------------------------------------------------------

# the default recipe's guest rootfs under another name (so never cached): its inputs are
# cached by then, so the driver runs diskimage-builder and nothing else
DRIVER = textwrap.dedent("""\
    import json, signal, sys
    from pathlib import Path
    from xenforge.build.executor import Executor
    from xenforge.cache import Cache
    from xenforge.plan import compute_ids, plan
    from xenforge.cli.progress import Progress
    from xenforge.recipe.load import load_recipe

    def term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
    # a job started in the background by a non-interactive shell (nohup ... &, some CI
    # runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = json.loads(sys.argv[1])
    g = plan(load_recipe(Path(spec["recipe"]))).only([spec["node"]])
    node = g.nodes[spec["node"]]
    node.options = {**node.options, "name": spec["name"]}
    compute_ids(g)
    try:
        with Progress(plain=True) as p:
            Executor(g, Cache(Path(spec["cache"])), p, logs_dir=Path(spec["logs"])).run()
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.parametrize(("sig", "phase"), [(signal.SIGINT, "install.d"),
                                            (signal.SIGTERM, "finalise.d")])
def test_interrupt_leaves_nothing(built: dict[str, xb.Built], cache: Cache, tmp_path: Path,
                                  sig: signal.Signals, phase: str) -> None:
    logs = tmp_path / "logs"
    spec = {"cache": str(cache.root), "logs": str(logs), "recipe": str(xb.RECIPE),
            "node": "rootfs:guest", "name": f"interrupted-{sig.name.lower()}"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = logs / "rootfs-guest.log"
    marker = f"in_target.d/{phase}"
    try:
        deadline = time.monotonic() + 900
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if marker in text:
                break
            assert proc.poll() is None, f"the build ended before {phase}: {text[-3000:]}"
            assert time.monotonic() < deadline, f"no {marker} in {log} after 900s"
            time.sleep(0.5)
        during = leftovers.remaining(cache.work_dir)
        assert during.mounts, "the chroot phase should have /proc, /dev... mounted"
        if phase == "finalise.d":  # the root filesystem is on a loop device by then
            assert during.loops, "the finalise phase should have the image on a loop device"
        time.sleep(2)
        proc.send_signal(sig)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read().decode() if proc.stderr else rc
    left = leftovers.remaining(cache.root)
    assert not left.mounts, left.mounts
    assert not left.loops, left.loops
    assert not left.processes, left.processes
