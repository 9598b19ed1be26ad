"""The README's main job end to end: the default recipe built from pinned sources, booted in
QEMU, verified by the testinfra suites (dom0 health, PV and PVH guest lifecycle), and
stopped; then `xenforge test --host` against a VM that `xenforge boot` runs.

The cache is the integration tests' (``$XENFORGE_TEST_CACHE``): they build the recipe's Xen
and kernel nodes through the same planner, so a cold run compiles each of them once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import image_scan
import pytest
from e2e_run import CACHE, RECIPE, REPO, XENFORGE, qemus, xenforge_test

from xenforge.cache import Cache
from xenforge.cache.state import StateDir
from xenforge.plan import plan
from xenforge.recipe.load import load_recipe

pytestmark = [pytest.mark.slow, pytest.mark.root]


@dataclass
class MainJob:
    out: Path  # where the build exported to
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> MainJob:
    """The README's main-job command (with its own output folder)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (diskimage-builder, loop devices)")
    out = tmp_path_factory.mktemp("out")
    res = subprocess.run(
        [*XENFORGE, "build", "--test", str(RECIPE), "--plain", "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=5400,
    )
    print(f"\n{res.stdout[-2500:]}")
    return MainJob(out / "xen-host", res.returncode, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def out_dir(main_job: MainJob) -> Path:
    assert (main_job.out / "manifest.json").is_file(), (
        f"the build failed:\n{main_job.stdout[-3000:]}\n{main_job.stderr[-3000:]}"
    )
    return main_job.out


def test_build_exports_every_artifact_with_checksums(out_dir: Path) -> None:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    paths = {a["path"] for a in manifest["artifacts"]}
    for want in ("hypervisor/xen.gz", "image-xen-host/xen-host.qcow2", "image-xen-host/access_key",
                 "iso-xen-host/iso-info.json"):
        assert want in paths, f"{want} missing from the artifacts: {sorted(paths)}"
    assert any(p.startswith("xen-debs/") and p.endswith(".deb") for p in paths)
    assert any(p.startswith("kernel-dom0/") and p.endswith(".deb") for p in paths)
    listed = {ln.split("  ", 1)[1] for ln in (out_dir / "SHA256SUMS").read_text().splitlines()}
    others = listed - paths  # the export's documents and the suites' results
    assert paths <= listed and {"manifest.json", "sbom.spdx.json",
                                "provenance.intoto.json"} <= others, others
    assert all(o.startswith("test-results/") or o.endswith(".json") for o in others), others
    verify = subprocess.run([*XENFORGE, "verify-release", str(out_dir)], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout


def test_the_default_recipes_sbom_names_sources_patches_and_image_packages(
        out_dir: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    sbom = out_dir / "sbom.spdx.json"
    problems = validate_full_spdx_document(parse_file(str(sbom)))
    assert not problems, [p.validation_message for p in problems[:10]]
    doc = json.loads(sbom.read_text())
    by_id = {p["SPDXID"]: p for p in doc["packages"]}
    sources = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Source-")}
    assert set(sources) == {"xen-4.20", "linux-6.12"}, sorted(sources)
    for src in sources.values():  # checksum and origin: a URL or a Debian package
        assert src["checksums"][0]["algorithm"] == "SHA256", src
        assert src["downloadLocation"].startswith("http") or \
            src["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/"), src
    patches = {f["fileName"].removeprefix("./") for f in doc["files"]}
    for line in ("hypervisor/patches/xen-4.20", "kernel_patches/linux-6.12"):
        series = (REPO / line / "series").read_text().split()
        assert {p for p in series if p.endswith(".patch")} <= patches, (line, patches)
    rels = [(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
            for r in doc["relationships"]]
    disk = "SPDXRef-Artifact-image-xen-host-xen-host.qcow2"
    inside = {by_id[b]["name"] for a, kind, b in rels if a == disk and kind == "CONTAINS"}
    installed = json.loads((out_dir / "image-xen-host" / "image-info.json").read_text())
    for name in ("openssh-server", "qemu-system-xen", "xenforge-xen-utils", "systemd"):
        assert name in inside, name
    assert len(inside) >= 200, len(inside)
    assert installed["role"] == "dom0"


def test_no_image_holds_secrets_or_facts_of_the_build_host(out_dir: Path,
                                                           tmp_path: Path) -> None:
    """Every built image (the dom0 disk with its guest disks, its qcow2, the ISO) holds no
    password hash, private key, SSH host key, machine-id, resolver or path of the build
    host (raw bytes too, so nothing survives in free blocks); the access key's private
    half is only in the output, mode 0600."""
    needles = image_scan.host_needles(CACHE, REPO)
    image = out_dir / "image-xen-host"
    key = image / "access_key"
    assert key.stat().st_mode & 0o777 == 0o600, oct(key.stat().st_mode)
    needles["the access key's private half"] = key.read_text().splitlines()[1].encode()
    info = json.loads((image / "image-info.json").read_text())
    root = next(p["start"] for p in info["disk"]["partitions"] if p["name"] == "root")
    raw = image / info["disk_file"]
    findings = image_scan.scan_disk(raw, root, tmp_path, needles)
    # the qcow2 is the raw disk converted: the same bytes, so the raw scan speaks for it
    same = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(raw),
                           str(image / "xen-host.qcow2")], capture_output=True, text=True)
    assert same.returncode == 0, f"the qcow2 differs from the raw disk: {same.stdout}"
    for iso in sorted((out_dir / "iso-xen-host").glob("*.iso")):
        findings += image_scan.scan_iso(iso, tmp_path, needles)
    assert not findings, "\n".join(findings)


def test_booted_default_recipe_passes_the_suites(main_job: MainJob, out_dir: Path) -> None:
    assert main_job.returncode == 0, f"suites failed:\n{main_job.stdout[-4000:]}"
    junit = out_dir / "test-results" / "junit.xml"
    cases = {c.get("name", "") for c in ET.parse(junit).getroot().iter("testcase")}
    lifecycles = [c for c in cases if c.startswith("test_guest_lifecycle")]
    assert any(re.search(r"guest-pvh\b", c) for c in lifecycles), cases
    assert any(re.search(r"guest-pv\b(?!h)", c) for c in lifecycles), cases
    assert any(re.search(r"guest-pvhvm\b", c) for c in lifecycles), cases
    assert any(c.startswith("test_hvm_guest_without_device_model") for c in cases), cases
    assert any("hypervisor_is_the_built_one" in c for c in cases), cases
    _bench(junit, "guest-pvhvm", "vbd")
    assert "passed, 0 failed" in main_job.stdout
    assert not qemus(), "a QEMU is still running after xenforge test"


def _bench(junit: Path, guest: str, driver: str) -> dict[str, str]:
    """The disk throughput an HVM guest's lifecycle measured (JUnit properties)."""
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.get("name", "").startswith(f"test_guest_lifecycle[{guest}-"):
            props = {p.get("name", ""): p.get("value", "")
                     for p in case.iter("property")}
            assert props.get("bench_driver") == driver, props
            assert float(props["bench_write_mib_s"]) > 0, props
            assert float(props["bench_read_mib_s"]) > 0, props
            print(f"{guest}: disk throughput {props}")
            return props
    raise AssertionError(f"no lifecycle of {guest} in {junit}")


def test_the_iso_boots_live_and_passes_the_dom0_suite(out_dir: Path, tmp_path: Path) -> None:
    """`xenforge test --iso`: the release ISO from a CD under SeaBIOS, live (root on the
    overlay, checked by the suite), the dom0 suite."""
    isos = list((out_dir / "iso-xen-host").glob("xen-host-*.iso"))
    assert len(isos) == 1, f"the build exported no ISO: {sorted(out_dir.iterdir())}"
    stdout, cases = xenforge_test(out_dir, tmp_path, "iso", "--firmware", "bios")
    assert "passed, 0 failed" in stdout
    assert any("hypervisor_is_the_built_one" in c for c in cases), cases
    assert any("the_machine_is_the_one_booted" in c for c in cases), cases
    assert not any(c.startswith("test_guest_lifecycle") for c in cases)


HVM = REPO / "recipes" / "xen-host-hvm.yaml"


def test_host_mode_and_an_unmodified_hvm_guest(out_dir: Path, tmp_path: Path) -> None:
    """What an operator does with real hardware: `xenforge test --host ssh://...` against a
    VM that `xenforge boot` started from a disk file under UEFI (`xenforge test` above booted
    with SeaBIOS). The disk is the HVM recipe's: the default host with an unmodified HVM
    guest (Debian's stock kernel, booted by SeaBIOS and GRUB from its own disk, emulated
    devices only), so one boot checks dom0 and that guest's life cycle (mode, devices, the
    emulated disk measured, clean power-off, no device model left: one boot of it, the
    recipe's ``tests.guest_boots: 1``) and the missing-device-model failure. The PVHVM form
    is the main job's (guest-pvhvm), with both boots."""
    out = out_dir.parent
    res = subprocess.run([*XENFORGE, "build", str(HVM), "--plain", "-o", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, f"build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    _check_slim_guest()
    state = StateDir.for_cache(CACHE).run_dir("xen-host") / "state.json"  # where boot writes it
    state.unlink(missing_ok=True)
    disk = out / "xen-host-hvm" / "image-xen-host" / "xen-host.qcow2"  # a file, not the recipe
    boot = subprocess.Popen(
        [*XENFORGE, "boot", str(disk), "--firmware", "uefi"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    junit = tmp_path / "host.xml"
    try:
        deadline = time.monotonic() + 1200
        while not state.exists():
            assert boot.poll() is None, (
                f"xenforge boot exited:\n{boot.stdout and boot.stdout.read()}"
            )
            assert time.monotonic() < deadline, "the VM did not become ready"
            time.sleep(3)
        info = json.loads(state.read_text())
        # the host keys the boot recorded: a plain ssh that checks them gets in
        known = Path(info["known_hosts"]).read_text()
        assert f"[127.0.0.1]:{info['port']} ssh-ed25519 " in known, known
        plain = subprocess.run(["ssh", "-p", str(info["port"]), "-i", info["key"], "-o",
                                "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                                f"UserKnownHostsFile={info['known_hosts']}",
                                f"{info['user']}@127.0.0.1", "true"],
                               capture_output=True, text=True, timeout=300)
        assert plain.returncode == 0, plain.stderr
        res = subprocess.run(
            [
                *XENFORGE,
                "test",
                str(HVM),
                "-o",
                str(out),
                "--host",
                info["ssh"],
                "--identity",
                info["key"],
                "--known-hosts",  # trusted on first use, as for a new real host
                info["known_hosts"],
                "--junit",
                str(junit),
                "--suite",
                "dom0",
                "--suite",
                "guests",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=2400,
        )
        print(res.stdout[-3000:])
        assert res.returncode == 0, f"--host run failed:\n{res.stdout}\n{res.stderr[-2000:]}"
        fleet = _fleet_smoke_test(info, out, tmp_path)
    finally:
        boot.send_signal(signal.SIGTERM)
        boot.wait(timeout=180)
    assert not qemus(), "xenforge boot left QEMU running after SIGTERM"
    _check_fleet(*fleet)
    cases = {c.get("name", "") for c in ET.parse(junit).getroot().iter("testcase")}
    assert any("hypervisor_is_the_built_one" in c for c in cases), cases
    assert any(c.startswith("test_guest_lifecycle[guest-hvm-") for c in cases), cases
    assert any(c.startswith("test_hvm_guest_without_device_model") for c in cases), cases
    _bench(junit, "guest-hvm", "sd")


def _check_slim_guest() -> None:
    """The HVM guest's image has the xenforge-slim element (guest-hvm.yaml): read from its
    root filesystem with debugfs, no documentation beyond copyright files, no manual pages,
    no translations, and dpkg's filters for later packages. That this image then boots and
    serves SSH is the life cycle's part."""
    graph = plan(load_recipe(HVM))
    node = graph.nodes["rootfs:guest-hvm"]
    image = next(Cache(CACHE).out(node.id).glob("*.ext4"))

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                              text=True, check=True).stdout

    docs = debugfs("ls /usr/share/doc/bash").split()
    assert "copyright" in docs and not any(n.startswith("changelog") for n in docs), docs
    assert "bash.1.gz" not in debugfs("ls /usr/share/man/man1")
    assert ".mo" not in debugfs("ls /usr/share/locale/de/LC_MESSAGES")
    assert "path-exclude=/usr/share/doc/*" in debugfs(
        "cat /etc/dpkg/dpkg.cfg.d/xenforge-slim")


def _fleet_smoke_test(info: dict[str, str], out: Path, tmp_path: Path
                      ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """An operator's fleet: the same VM under two names (one with its own key) and a host
    that is down, in an Ansible inventory; the dom0 suite on all of them, two at a time."""
    url = urllib.parse.urlsplit(info["ssh"])  # ssh://USER@127.0.0.1:PORT (USER uses sudo)
    user, port = url.username, url.port
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    inventory = tmp_path / "fleet.ini"
    inventory.write_text(
        "[hosts]\n"
        f"vm-a ansible_host=127.0.0.1 ansible_port={port} ansible_user={user}\n"
        f"vm-b ansible_host=127.0.0.1 ansible_port={port} "
        f"ansible_ssh_private_key_file={info['key']}\n"
        "[gone]\n"
        f"down ansible_host=127.0.0.1 ansible_port={closed}\n"
        f"[all:vars]\nansible_user={user}\n")
    junit = tmp_path / "fleet.xml"
    res = subprocess.run([*XENFORGE, "test", str(HVM), "-o", str(out),
                          "--inventory", str(inventory), "-j", "2",
                          "--suite", "dom0", "--identity", info["key"], "--known-hosts",
                          info["known_hosts"], "--junit", str(junit)],
                         cwd=REPO, capture_output=True, text=True, timeout=2400)
    print(res.stdout[-3000:])
    return res, junit


def _check_fleet(res: subprocess.CompletedProcess[str], junit: Path) -> None:
    assert res.returncode == 1, f"one host is down: the run fails\n{res.stdout}{res.stderr}"
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert set(suites) == {"vm-a", "vm-b", "down"}, suites
    for host in ("vm-a", "vm-b"):
        cases = list(suites[host].iter("testcase"))
        assert len(cases) >= 10, (host, len(cases))
        bad = [c.get("name") for c in cases
               if c.find("failure") is not None or c.find("error") is not None]
        assert not bad, (host, bad)
        skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
        assert len(skipped) <= 1, (host, skipped)  # only "the machine booted" (none given)
        assert any("hypervisor_is_the_built_one" in (c.get("name") or "") for c in cases)
    down = list(suites["down"].iter("testcase"))
    assert [c.get("name") for c in down] == ["reachable"], down
    failure = down[0].find("failure")
    assert failure is not None and "cannot connect to 127.0.0.1" in (
        failure.get("message") or ""), ET.tostring(down[0])
    table = res.stdout
    for host in ("vm-a", "vm-b", "down"):
        assert re.search(rf"^\s*{host}\s", table, re.M), table


def test_a_sigkilled_xenforge_boot_leaves_no_qemu(out_dir: Path) -> None:
    """SIGKILL runs none of xenforge's clean-up: the VM must still go (it dies with the
    thread that started it)."""
    assert not qemus()
    disk = out_dir / "image-xen-host" / "xen-host.qcow2"
    boot = subprocess.Popen([*XENFORGE, "boot", str(disk)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not qemus():
            assert boot.poll() is None, "xenforge boot exited before starting QEMU"
            assert time.monotonic() < deadline, "xenforge boot did not start QEMU"
            time.sleep(0.5)
        boot.send_signal(signal.SIGKILL)
        boot.wait(timeout=30)
        deadline = time.monotonic() + 15
        while qemus() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not qemus(), "QEMU outlived a SIGKILLed xenforge boot"
    finally:
        boot.kill()
        boot.wait()
        for line in qemus():  # do not leave one behind for the next test
            os.kill(int(line.split()[0]), signal.SIGKILL)


BROKEN = REPO / "tests" / "recipes" / "e2e" / "xen-host-no-room.yaml"


def test_a_host_without_room_for_its_guests_fails_saying_why(out_dir: Path,
                                                             tmp_path: Path) -> None:
    """A deliberately broken image (dom0_mem leaves Xen no memory for the guests) builds and
    boots, and the guest suite fails with a message naming the cause; JUnit records it."""
    out = out_dir.parent
    res = subprocess.run([*XENFORGE, "build", str(BROKEN), "--plain", "-o", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, f"build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    junit = tmp_path / "junit.xml"
    res = subprocess.run([*XENFORGE, "test", str(BROKEN), "-o", str(out), "--suite", "guests",
                          "--junit", str(junit)],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 1, f"the suite should fail:\n{res.stdout}\n{res.stderr[-3000:]}"
    # testinfra adds the host to the test ids: test_guest_lifecycle[guest-pv-ssh://...]
    for guest in ("guest-pv", "guest-pvh"):
        line = next((ln for ln in res.stdout.splitlines()
                     if "FAILED" in ln and f"[{guest}-" in ln), "")
        assert f"xl create /etc/xen/{guest}.cfg failed" in line, res.stdout
        assert "Out of memory" in line or "Cannot allocate memory" in line, res.stdout
        assert "MiB free and the guest asks 256 MiB" in line, res.stdout
    failed = sorted(c.get("name", "") for c in ET.parse(junit).getroot().iter("testcase")
                    if c.find("failure") is not None)
    assert len(failed) == 2, failed
    assert failed[0].startswith("test_guest_lifecycle[guest-pv-"), failed
    assert failed[1].startswith("test_guest_lifecycle[guest-pvh-"), failed
    assert not qemus("xen-host-no-room"), \
        "a QEMU is still running after a failed xenforge test"
