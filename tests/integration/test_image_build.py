"""Real image builds (diskimage-builder, root) of the default recipe: its two guest images and
the dom0 image carrying them, built from the recipe's own packages (Xen and kernels from
source, through the planner and the executor, in the test cache shared with the e2e test).

Checks what the images hold: one ext4 filesystem per guest with a small initramfs, the dom0
disk's partitions, the packages of the local repository installed, the guests' xl configs,
the access key. Booting them (SeaBIOS and OVMF, xl list, package versions, guests) is the
e2e test's job (``tests/e2e/test_main_job.py``), on the same cache entries. A second test
interrupts image builds in the chroot phase and checks that no loop device, mount or chroot
process is left.
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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root"),
    pytest.mark.skipif(shutil.which("disk-image-create") is None
                       and not (Path(sys.prefix) / "bin" / "disk-image-create").exists(),
                       reason="no diskimage-builder (disk-image-create)"),
]

GUESTS = {"image:guest-pvh": "guest-pvh", "image:guest-pv": "guest-pv"}


@pytest.fixture(scope="module")
def cache() -> Cache:
    return xb.test_cache()


@pytest.fixture(scope="module")
def built(cache: Cache) -> dict[str, xb.Built]:
    start = time.monotonic()
    nodes = xb.recipe_build(cache, ["image:xen-host"])
    print(f"\nimage build: {time.monotonic() - start:.0f}s "
          + ", ".join(f"{n} {'cached' if b.cached else f'{b.seconds:.0f}s'}"
                      for n, b in nodes.items() if n.startswith(("image", "apt-repo"))))
    assert not leftovers.remaining(cache.work_dir), "a build left mounts/loops behind"
    return nodes


@pytest.mark.parametrize("node", sorted(GUESTS))
def test_guest_image(built: dict[str, xb.Built], node: str) -> None:
    out, name = built[node].out, GUESTS[node]
    info = xb.read_json(out / "image-info.json")
    assert info["role"] == "guest" and (out / f"{name}.raw").is_file()
    assert (out / "vmlinuz").is_file()
    assert info["xl"]["cmdline"].startswith("root=/dev/xvda ro")
    # the guest kernel is the recipe's, from the local repository, and installed
    assert [p["name"] for p in info["xenforge_packages"]] == [
        f"linux-image-{info['kernel_version']}"]
    assert all(p["installed"] for p in info["xenforge_packages"]), info["xenforge_packages"]
    # PV guests get their initramfs unpacked into their own memory: it must stay small
    if (out / "initrd.img").exists():
        assert (out / "initrd.img").stat().st_size < 16 << 20
    # the disk is one ext4 filesystem (the guest's xvda) with the requested UUID
    blkid = subprocess.run(["blkid", "-o", "export", out / f"{name}.raw"], check=True,
                           capture_output=True, text=True).stdout
    assert "TYPE=ext4" in blkid and f"UUID={info['fs_uuid']}" in blkid


def test_dom0_image(built: dict[str, xb.Built]) -> None:
    out = built["image:xen-host"].out
    info = xb.read_json(out / "image-info.json")
    repo = xb.read_json(built["apt-repo:xen-host"].out / "repo.json")
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
    assert [(g["name"], g["type"]) for g in info["guests"]] == [("guest-pvh", "pvh"),
                                                                ("guest-pv", "pv")]
    print("\nsizes: " + ", ".join(f"{k} {v['size'] >> 20} MiB ({v['allocated'] >> 20} MiB "
                                  "used)" for k, v in info["files"].items()))


# -- interrupting a build ------------------------------------------------------------------

# the default recipe's guest image under another name (so never cached): its inputs are
# cached by then, so the driver runs diskimage-builder and nothing else
DRIVER = textwrap.dedent("""\
    import json, signal, sys
    from pathlib import Path
    from xenforge.build.executor import Executor
    from xenforge.cache import Cache
    from xenforge.plan.graph import compute_ids
from xenforge.plan import plan
    from xenforge.cli.progress import Progress
    from xenforge.recipe.load import load_recipe

    def term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
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
            "node": "image:guest-pvh", "name": f"interrupted-{sig.name.lower()}"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = logs / "image-guest-pvh.log"
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
