"""Real image builds (diskimage-builder, root) and boots (QEMU, TCG).

Builds a guest image and a dom0 image carrying it, boots the dom0 disk under SeaBIOS and
under OVMF, and checks from the serial console that GRUB started Xen, that dom0 reached
userspace with the Xen services up (``xl list`` shows Domain-0 and the autostarted guest)
and that the packages installed are the ones of the local repository; over SSH (the access
user, a user-net port forward) that ``sudo xl list`` works. A second test interrupts image
builds in the chroot phase and checks that no loop device, mount or chroot process is left.

Packages: the directory in ``XENFORGE_TEST_DEBS`` (``*.deb``: a hypervisor, a toolstack and
a kernel, e.g. xenforge's own), else Debian's ``xen-hypervisor-4.17-amd64``,
``xen-utils-4.17`` and ``linux-image-amd64`` fetched with ``apt-get download``.
``XENFORGE_TEST_CACHE`` keeps the cache (debootstrap tarball, apt downloads) across runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from xenforge import leftovers
from xenforge.build import Executor
from xenforge.cache import Cache
from xenforge.plan import Graph, Node, compute_ids
from xenforge.plan_images import IMAGE_ELEMENTS
from xenforge.progress import Progress
from xenforge.qemu import Machine, Vm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
]

DEBIAN_PACKAGES = ("xen-hypervisor-4.17-amd64", "xen-utils-4.17", "linux-image-amd64")
XEN_CMDLINE = "console=com1 com1=115200 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all"


def _kernel_dep(pkg: str = "linux-image-amd64") -> str:
    out = subprocess.run(["apt-cache", "depends", pkg], check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"Depends: (linux-image-[0-9]\S+)", out)
    assert m, out
    return m.group(1)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of .debs: 'dom0' (hypervisor, toolstack, kernel) and 'guest' (kernel)."""
    root = tmp_path_factory.mktemp("debs")
    given = os.environ.get("XENFORGE_TEST_DEBS")
    src = Path(given) if given else root / "all"
    if not given:
        src.mkdir()
        subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES, _kernel_dep()], cwd=src,
                       check=True, capture_output=True)
    dom0, guest = root / "dom0", root / "guest"
    dom0.mkdir()
    guest.mkdir()
    for deb in sorted(src.glob("*.deb")):
        shutil.copy(deb, dom0)
        if deb.name.startswith("linux-image"):
            shutil.copy(deb, guest)
    assert list(guest.glob("*.deb")), f"no linux-image-*.deb in {src}"
    return {"dom0": dom0, "guest": guest}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    keep = os.environ.get("XENFORGE_TEST_CACHE")
    return Cache(Path(keep) if keep else tmp_path_factory.mktemp("cache"))


def image_graph(debs: dict[str, Path], *, with_dom0: bool = True) -> Graph:
    g = Graph(recipe="image-test")
    for role in ("guest", "dom0") if with_dom0 else ("guest",):
        g.add(Node(name=f"source:debs-{role}", stage="source",
                   options={"spec": {"path": debs[role].name}}, files={"path": debs[role]}))
        g.add(Node(name=f"apt-repo:{role}", stage="apt-repo",
                   inputs={"deb0": f"source:debs-{role}"}))
    g.add(Node(name="image:guest", stage="image", inputs={"repo": "apt-repo:guest"},
               files={"elements": IMAGE_ELEMENTS},
               options={"name": "guest-pvh", "role": "guest", "size": 1536,
                        "formats": ["raw"], "kernel_cmdline": "console=hvc0"}))
    if with_dom0:
        g.add(Node(name="image:dom0", stage="image",
                   inputs={"repo": "apt-repo:dom0", "guest0": "image:guest",
                           "guest1": "image:guest"},
                   files={"elements": IMAGE_ELEMENTS},
                   options={"name": "xen-host", "role": "dom0", "size": 5120,
                            "formats": ["raw", "qcow2"], "firmware": ["bios", "uefi"],
                            "access": True, "xen_cmdline": XEN_CMDLINE,
                            "kernel_cmdline": "console=hvc0 earlyprintk=xen",
                            # one disk, set up as a PV guest (autostarted) and as a PVH
                            # guest (only configured: under QEMU's TCG, Xen's PVH/HVM
                            # guests run on emulated SVM, which crashes them and can
                            # corrupt dom0; tsc_mode native avoids Xen's failing RDTSCP
                            # emulation there)
                            "guests": [{"name": "guest-pv", "type": "pv", "memory": 256,
                                        "autostart": True},
                                       {"name": "guest-pvh", "type": "pvh", "memory": 256,
                                        "autostart": False, "tsc_mode": "native"}]}))
    compute_ids(g)
    return g


@pytest.fixture(scope="module")
def built(debs: dict[str, Path], cache: Cache, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Path]:
    graph = image_graph(debs)
    logs = tmp_path_factory.mktemp("logs")
    start = time.monotonic()
    with Progress(plain=True) as progress:
        results = Executor(graph, cache, progress, jobs=2, logs_dir=logs).run()
    failed = {n: r.error.render() for n, r in results.items() if r.error is not None}
    assert not failed, failed
    print(f"\nimage build: {time.monotonic() - start:.0f}s "
          + ", ".join(f"{n} {r.status} {r.seconds:.0f}s" for n, r in results.items()))
    assert not leftovers.remaining(cache.root), "a build left mounts/loops behind"
    out = {name: r.out for name, r in results.items() if r.out is not None}
    return {"guest": out["image:guest"], "dom0": out["image:dom0"],
            "repo": out["apt-repo:dom0"]}


def test_guest_image(built: dict[str, Path]) -> None:
    out = built["guest"]
    info = json.loads((out / "image-info.json").read_text())
    assert info["role"] == "guest" and (out / "guest-pvh.raw").is_file()
    assert (out / "vmlinuz").is_file()
    assert info["xl"]["cmdline"].startswith("root=/dev/xvda ro")
    assert all(p["installed"] for p in info["xenforge_packages"])
    # the disk is one ext4 filesystem (the guest's xvda) with the requested label
    blkid = subprocess.run(["blkid", "-o", "export", out / "guest-pvh.raw"], check=True,
                           capture_output=True, text=True).stdout
    assert "TYPE=ext4" in blkid and f"UUID={info['fs_uuid']}" in blkid


def test_dom0_image(built: dict[str, Path]) -> None:
    out = built["dom0"]
    info = json.loads((out / "image-info.json").read_text())
    repo = json.loads((built["repo"] / "repo.json").read_text())
    assert {p["name"]: p["version"] for p in repo["packages"]} == {
        p["name"]: p["version"] for p in info["xenforge_packages"]}
    for p in info["xenforge_packages"]:
        assert info["packages"][p["name"]] == p["version"]
    assert info["hypervisors"], "no /boot/xen*.gz in the image"
    assert [p["name"] for p in info["disk"]["partitions"]] == ["bios", "esp", "root"]
    assert (out / "xen-host.raw").is_file() and (out / "xen-host.qcow2").is_file()
    assert (out / "access_key").stat().st_mode & 0o077 == 0
    assert [g["name"] for g in info["guests"]] == ["guest-pv", "guest-pvh"]
    print("\nsizes: " + ", ".join(f"{k} {v['size'] >> 20} MiB ({v['allocated'] >> 20} MiB "
                                  "used)" for k, v in info["files"].items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


JOURNAL_PREFIX = re.compile(r"^\[\s*[0-9.]+\] xenforge-boot-report\[[0-9]+\]: ", re.M)


def report(serial: str) -> dict[str, str]:
    """The sections of the xenforge boot report (xen-dom0 element) in a serial log (it
    reaches the console through journald, which prefixes each line)."""
    text = JOURNAL_PREFIX.sub("", serial.replace("\r", ""))
    block = text[text.rindex("XENFORGE-REPORT-BEGIN"):text.rindex("XENFORGE-REPORT-END")]
    sections: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        m = re.fullmatch(r"--- ([a-z0-9-]+)\s*", line)
        if m:
            name = m.group(1)
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def ssh(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", key, "-p", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=20", "xenforge@127.0.0.1", command],
        capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_dom0_boots_xen(built: dict[str, Path], firmware: str, tmp_path: Path) -> None:
    out = built["dom0"]
    info = json.loads((out / "image-info.json").read_text())
    port = free_port()
    net = ("-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
           "-device", "virtio-net-pci,netdev=n0")
    machine = Machine(memory=2560, cpus=2, firmware=firmware)  # type: ignore[arg-type]
    work = tmp_path / "vm"
    with Vm(machine, workdir=work, log=work / "qemu.log", timeout=1800,
            disks=(out / "xen-host.qcow2",), extra=("-snapshot", *net)) as vm:
        for pattern, timeout in ((r"Loading xen", 300),  # GRUB ran our grub.cfg
                                 (r"\(XEN\) Xen version", 300),
                                 (r"XENFORGE-REPORT-END", 900)):
            assert vm.wait_for(pattern, timeout=timeout), (
                f"{firmware}: no {pattern!r} on the console; see {vm.serial}")
        booted = vm.elapsed()
        sections = report(vm.serial_text())
        assert "control_d" in sections["capabilities"]
        assert re.search(r"^Domain-0\s+0\s", sections["xl-list"], re.M), sections["xl-list"]
        versions = dict(line.split("=", 1) for line in sections["packages"].split()
                        if "=" in line)
        for p in info["xenforge_packages"]:
            assert versions.get(p["name"]) == p["version"]
        # over SSH with the per-build key: the toolstack works, the guest was autostarted
        deadline = time.monotonic() + 300
        while True:
            res = ssh(out / "access_key", port, "sudo xl list")
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert res.returncode == 0, res.stderr
        assert re.search(r"^Domain-0\s", res.stdout, re.M)
        # the PV guest was autostarted and reached userspace (its console, logged by
        # xenconsoled, has the xen-domu element's ready line)
        m = re.search(r"^guest-pv\s+\d+\s+\d+\s+\d+\s+(\S+)", res.stdout, re.M)
        assert m and "c" not in m.group(1), res.stdout
        ready = ssh(out / "access_key", port, "sudo timeout 600 sh -c 'until grep -a "
                    "XENFORGE-GUEST-READY /var/log/xen/console/guest-guest-pv.log; "
                    "do sleep 5; done'")
        assert "type=xen guest_type=PV " in ready.stdout, ready.stdout + ready.stderr
        cfgs = ssh(out / "access_key", port, "ls /etc/xen/auto; cat /etc/xen/guest-pvh.cfg")
        assert cfgs.stdout.split()[0] == "guest-pv.cfg", cfgs.stdout
        assert 'type = "pvh"' in cfgs.stdout and 'tsc_mode = "native"' in cfgs.stdout
    print(f"\n{firmware}: dom0 report after {booted:.0f}s; serial log {vm.serial}")


# -- interrupting a build ------------------------------------------------------------------

DRIVER = textwrap.dedent("""\
    import json, signal, sys
    from pathlib import Path
    from xenforge.build import Executor
    from xenforge.cache import Cache
    from xenforge.plan import Graph, Node, compute_ids
    from xenforge.progress import Progress

    def term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
    spec = json.loads(sys.argv[1])
    g = Graph(recipe="interrupt")
    for n in spec["nodes"]:
        g.add(Node(name=n["name"], stage=n["stage"], options=n["options"],
                   inputs=n["inputs"], files={k: Path(v) for k, v in n["files"].items()}))
    compute_ids(g)
    try:
        with Progress(plain=True) as p:
            Executor(g, Cache(Path(spec["cache"])), p, logs_dir=Path(spec["logs"])).run()
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.parametrize(("sig", "phase"), [(signal.SIGINT, "install.d"),
                                            (signal.SIGTERM, "finalise.d")])
def test_interrupt_leaves_nothing(debs: dict[str, Path], cache: Cache, tmp_path: Path,
                                  sig: signal.Signals, phase: str) -> None:
    graph = image_graph(debs, with_dom0=False)
    guest = graph.nodes["image:guest"]
    opts: dict[str, Any] = dict(guest.options)
    opts["name"] = f"interrupted-{sig.name.lower()}"  # never cached: always a fresh build
    guest.options = opts
    logs = tmp_path / "logs"
    spec = {"cache": str(cache.root), "logs": str(logs), "nodes": [
        {"name": n.name, "stage": n.stage, "options": n.options, "inputs": n.inputs,
         "files": {k: str(v) for k, v in n.files.items()}} for n in graph.nodes.values()]}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = logs / "image-guest.log"
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
