"""The verify side without a VM: target URLs, the ssh config, JUnit parsing, running suites
(here a user's testinfra file against this machine through testinfra's local backend), what a
build's outputs say a host must show, and what ``xenforge boot`` accepts as a file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from xenforge.core.errors import InputError
from xenforge.recipe.model import TestsSection as Settings
from xenforge.verify.exported import expectations, find_dom0
from xenforge.verify.suites import INFRA_DIR, parse_junit, parse_target, run_suites, ssh_config
from xenforge.verify.targets import artifact_target, boot_target, suite_expectations
from xenforge.vm import session as boot


def _infra_module(name: str) -> ModuleType:
    path = INFRA_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"xenforge_infra_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infra_dom0 = _infra_module("test_dom0")


def test_parse_target() -> None:
    assert parse_target("ssh://xenforge@127.0.0.1:2222") == ("ssh", "xenforge", "127.0.0.1", 2222)
    assert parse_target("paramiko://host") == ("paramiko", "root", "host", None)
    for bad in ("host", "http://host", "ssh://", "ssh://root@h1:abc", "ssh://root@h1:99999",
                "ssh://root@[::1", "ssh://root@h1,ssh://root@h2", "ssh://root@h1%00",
                "ssh://root@h1/etc"):
        with pytest.raises(InputError, match="not a host address"):
            parse_target(bad)


def test_ssh_config_reuses_one_connection(tmp_path: Path) -> None:
    text = ssh_config(tmp_path / "cfg", throwaway_host=False).read_text()
    assert "ControlMaster auto" in text and f"ControlPath {tmp_path}/cm-%C" in text
    assert "StrictHostKeyChecking" not in text  # a real host keeps its known key
    vm = ssh_config(tmp_path / "cfg2", throwaway_host=True).read_text()
    assert "StrictHostKeyChecking no" in vm and "UserKnownHostsFile /dev/null" in vm
    kh = tmp_path / "known_hosts"
    new = ssh_config(tmp_path / "cfg3", throwaway_host=False, known_hosts=kh).read_text()
    assert "StrictHostKeyChecking accept-new" in new and f"UserKnownHostsFile {kh}" in new


def test_parse_junit_counts_failures_errors_and_skips(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(textwrap.dedent("""\
        <testsuites><testsuite>
          <testcase classname="test_dom0" name="test_ok"/>
          <testcase classname="test_dom0" name="test_mem">
            <failure message="AssertionError: dom0 has 512 MiB, the recipe asks 1024">x</failure>
          </testcase>
          <testcase classname="test_guests" name="test_life[g]"><error message="boom"/></testcase>
          <testcase classname="test_dom0" name="test_skip"><skipped message="n/a"/></testcase>
        </testsuite></testsuites>"""))
    out = parse_junit(xml)
    assert (out.tests, out.skipped, len(out.failures)) == (4, 1, 2)
    assert out.failures[0].test == "test_dom0::test_mem"
    assert "the recipe asks 1024" in out.failures[0].message
    assert not out.ok
    assert "1 passed, 2 failed, 1 skipped" in out.summary()
    assert parse_junit(tmp_path / "missing.xml").tests == 0


def test_run_suites_records_a_failing_check_in_junit(tmp_path: Path) -> None:
    suite = tmp_path / "test_mine.py"
    suite.write_text(textwrap.dedent("""\
        def test_os_release(host):
            assert host.file("/etc/os-release").exists

        def test_expected_file(host):
            path = "/nonexistent/xenforge-check"
            assert host.file(path).exists, f"{path} is missing on this host"
        """))
    junit = tmp_path / "out" / "junit.xml"
    outcome = run_suites("local://", expect={}, junit=junit, log=tmp_path / "verify.log",
                         builtin=(), extra=[suite])
    assert junit.is_file()
    assert outcome.tests == 2 and not outcome.ok
    (failure,) = outcome.failures
    assert "test_expected_file" in failure.test
    assert "/nonexistent/xenforge-check is missing on this host" in failure.message


def test_run_suites_names_a_missing_suite(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"test suite not found: .*nope\.py"):
        run_suites("local://", expect={}, junit=tmp_path / "j.xml", log=tmp_path / "log",
                   builtin=(), extra=[tmp_path / "nope.py"])


def _fake_build(out: Path) -> Path:
    img = out / "image-xen-host"
    img.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    (out / "hypervisor").mkdir()
    (out / "hypervisor" / "build-info.json").write_text(
        json.dumps({"version": "4.17.5", "build_id": "xenforge-abc"}))
    (img / "xen-host.qcow2").write_bytes(b"")
    (img / "access_key").write_text("KEY")
    (img / "image-info.json").write_text(json.dumps({
        "role": "dom0", "name": "xen-host", "firmware": ["uefi"], "access_user": "xenforge",
        "kernel_version": "6.1.176-xenforge",
        "xen_cmdline": "console=com1 dom0_mem=1024M,max:1024M",
        "xenforge_packages": [{"name": "xenforge-xen-utils", "version": "4.17.5-1",
                               "installed": True}],
        "guests": [{"name": "guest-pv", "type": "pv", "memory": 256, "autostart": True,
                    "kernel_version": "6.1.176-domu"}]}))
    return img / "xen-host.qcow2"


def test_expectations_come_from_the_build_records(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    want = expectations(tmp_path)
    assert want["xen"] == {"version": "4.17.5", "build_id": "xenforge-abc"}
    assert want["dom0"] == {"kernel_release": "6.1.176-xenforge", "memory_mib": 1024}
    assert want["packages"] == {"xenforge-xen-utils": "4.17.5-1"}
    assert want["guests"] == [{"name": "guest-pv", "type": "pv", "memory": 256,
                               "kernel_release": "6.1.176-domu",
                               "config": "/etc/xen/guest-pv.cfg", "autostart": True}]
    host = find_dom0(tmp_path)
    assert host.disk.name == "xen-host.qcow2" and host.user == "xenforge"


def test_find_dom0_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        find_dom0(tmp_path / "xen-host")
    assert "xenforge build recipes/xen-host.yaml" in (err.value.hint or "")


def test_boot_takes_a_built_disk_image_with_its_firmware_and_key(tmp_path: Path) -> None:
    disk = _fake_build(tmp_path)
    target = artifact_target(disk, firmware=None, settings=Settings())
    assert target.disk == disk and target.iso is None
    assert target.firmware == "uefi"  # the only one the image was made for
    assert target.key == disk.parent / "access_key" and target.user == "xenforge"
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"")
    t = artifact_target(iso, firmware="uefi", settings=Settings())
    assert (t.iso, t.disk, t.firmware, t.key, t.user) == (iso, None, "uefi", None, "root")
    with pytest.raises(InputError, match="not a recipe or a bootable file"):
        artifact_target(tmp_path / "image-xen-host" / "image-info.json", firmware=None,
                        settings=Settings())
    # asking for a firmware the image was not built for is an error, not a silent fallback
    with pytest.raises(InputError, match=r"does not boot with bios \(it was built for uefi\)"):
        artifact_target(disk, firmware="bios", settings=Settings())
    with pytest.raises(InputError, match="does not boot with bios"):
        boot_target(tmp_path, firmware="bios", settings=Settings())
    assert boot_target(tmp_path, firmware=None, settings=Settings()).firmware == "uefi"


def test_recipe_services_reach_the_suite(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    settings = Settings(services=["ssh", "xen-watchdog.timer"])
    assert suite_expectations(tmp_path, settings)["services"] == ["ssh", "xen-watchdog.timer"]
    assert "services" not in suite_expectations(tmp_path, Settings())
    assert suite_expectations(None, settings) == {"services": ["ssh", "xen-watchdog.timer"]}


def test_the_recipes_guest_boots_reach_each_guest(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    assert [g["boots"] for g in suite_expectations(tmp_path, Settings())["guests"]] == [2]
    one = suite_expectations(tmp_path, Settings(guest_boots=1))
    assert [(g["name"], g["boots"]) for g in one["guests"]] == [("guest-pv", 1)]
    named = suite_expectations(tmp_path, Settings(guest_boots={"guest-pv": 1}))
    assert [g["boots"] for g in named["guests"]] == [1]
    other = suite_expectations(tmp_path, Settings(guest_boots={"guest-x": 1}))
    assert [g["boots"] for g in other["guests"]] == [2]  # a guest not named: both boots


def _units_block(states: dict[str, tuple[str, str]]) -> str:
    return "\n\n".join(f"Id={u}\nLoadState={load}\nActiveState={active}\nSubState=x"
                       for u, (load, active) in states.items())


def test_services_check_names_each_unit_that_is_down() -> None:
    facts = {"units": (0, _units_block({
        "ssh.service": ("loaded", "active"), "xen-watchdog.timer": ("loaded", "failed"),
        "xenstored.service": ("loaded", "active"), "xendomains.service": ("loaded", "activating"),
        "xenconsoled.service": ("not-found", "inactive")}))}
    with pytest.raises(AssertionError) as err:
        infra_dom0.test_xen_services_active(facts, {"services": ["ssh", "xen-watchdog.timer"]})
    assert "xen-watchdog.timer (failed/x, loaded; see journalctl -u xen-watchdog.timer)" in \
        str(err.value)
    assert "ssh" not in str(err.value).split("): ", 1)[1]
    # no list in the recipe: every Xen unit the host has installed, and only those
    with pytest.raises(AssertionError, match=r"not active \(.*\): xendomains\.service \(activ") \
            as err:
        infra_dom0.test_xen_services_active(facts, {})
    assert "xenconsoled" not in str(err.value)  # not installed: not required


def test_dom0_facts_come_in_one_command() -> None:
    """The suite's one round trip, run here (no Xen host): every section is there with its
    exit status, and the checks read them."""
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "bash"],
                             capture_output=True, text=True, check=True).stdout
    script = infra_dom0._script(["ssh.service", "xenstored.service"], ["bash"])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    took: dict[str, float] = {}
    facts = infra_dom0._parse(out, took)
    assert set(facts) == {"system", "capabilities", "devices", "xl-info", "xl-list", "uname",
                          "processes", "units", "links", "os-release", "machine", "packages",
                          "boot-time"}
    assert set(took) == set(facts) and all(0 <= t < 600 for t in took.values())
    assert facts["uname"] == (0, os.uname().release)
    assert facts["xl-info"][0] != 0  # this machine is no Xen host: the check says so
    with pytest.raises(AssertionError, match="`xl info` failed with exit"):
        infra_dom0.test_hypervisor_is_the_built_one(facts, {})
    infra_dom0.test_packages_are_the_built_ones(facts, {"packages": {"bash": version}})
    with pytest.raises(AssertionError, match=r"bash .* is installed, the build made 0\.1"):
        infra_dom0.test_packages_are_the_built_ones(facts, {"packages": {"bash": "0.1"}})
    with pytest.raises(AssertionError, match="bridge xenbr9 does not exist"):
        infra_dom0.test_guest_bridge_up(facts, {"bridge": "xenbr9"})
    lo = next(ln for ln in facts["links"][1].splitlines() if ": lo:" in ln)
    assert lo
    if facts["units"][0] == 0:  # a machine without systemd (a container) has no units
        assert "ssh.service" in infra_dom0._units(facts)


def test_dom0_boot_time_reads_the_managers_and_units_timestamps() -> None:
    """What the JUnit report keeps of dom0's boot, from two sections the snapshot gathered;
    a unit that never started, and a host that said nothing, are left out."""
    units = ("Id=xendomains.service\nActiveState=active\n"
             "InactiveExitTimestampMonotonic=40000000\nActiveEnterTimestampMonotonic=96627000\n"
             "\nId=xenstored.service\nActiveState=active\n"
             "InactiveExitTimestampMonotonic=20000000\nActiveEnterTimestampMonotonic=21500000\n"
             "\nId=xen.service\nActiveState=inactive\n"
             "InactiveExitTimestampMonotonic=0\nActiveEnterTimestampMonotonic=0\n")
    boot = ("InitRDTimestampMonotonic=0\nUserspaceTimestampMonotonic=11415000\n"
            "FinishTimestampMonotonic=103476000\n")
    facts = {"units": (0, units), "boot-time": (0, boot)}
    assert infra_dom0._boot_time(facts) == (
        "kernel 11.4s + userspace 92.1s = 103.5s; xendomains.service 56.6s, "
        "xenstored.service 1.5s")
    with_initrd = boot.replace("InitRDTimestampMonotonic=0", "InitRDTimestampMonotonic=3000000")
    assert infra_dom0._boot_time({"boot-time": (0, with_initrd)}).startswith(
        "kernel 3.0s + initrd 8.4s + userspace 92.1s")
    assert infra_dom0._boot_time({"boot-time": (1, "Failed to connect to bus")}) == \
        "(not reported)"


def test_a_run_that_writes_no_junit_never_passes_on_an_old_one(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite tests="3"><testcase name="a"/><testcase name="b"/>'
                     '<testcase name="c"/></testsuite></testsuites>')
    assert parse_junit(junit).ok  # what an earlier, green run left
    suite = tmp_path / "test_slow.py"
    suite.write_text("import time\n\ndef test_hangs(host):\n    time.sleep(120)\n")
    outcome = run_suites("local://", expect={}, junit=junit, log=tmp_path / "verify.log",
                         builtin=(), extra=[suite], timeout=8)
    assert not outcome.ok
    assert "no test ran" in outcome.failures[0].message


def test_one_vm_session_per_run_dir(tmp_path: Path) -> None:
    """A second session in the same run dir would delete the first one's monitor socket,
    pid file and overlay: it is refused, naming the process that holds the dir."""
    first = boot._claim(tmp_path)
    try:
        with pytest.raises(InputError, match=rf"another xenforge session .* \(pid {os.getpid()}\)"):
            boot._claim(tmp_path)
    finally:
        os.close(first)
    os.close(boot._claim(tmp_path))  # free again once the first session ended


def test_a_run_without_tests_says_0_passed() -> None:
    from xenforge.verify.suites import Failure, Outcome

    outcome = Outcome(tests=0, failures=[Failure("pytest", "no test ran (exit 4)")])
    assert outcome.summary().startswith("0 passed, 1 failed") and not outcome.ok
