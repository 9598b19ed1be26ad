"""dom0 health: the hypervisor, the toolstack, dom0's kernel and memory, services, bridge."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _output(host: Any, command: str) -> str:
    res = host.run(command)
    assert res.rc == 0, f"`{command}` failed with exit {res.rc}: {res.stderr.strip()}"
    return str(res.stdout)


def _xl_info(host: Any) -> dict[str, str]:
    out = _output(host, "xl info")
    info = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def test_dom0_runs_on_xen_as_control_domain(host: Any) -> None:
    caps = host.file("/proc/xen/capabilities")
    assert caps.exists, "/proc/xen/capabilities is missing: dom0 is not running under Xen " \
        "(or xenfs is not mounted)"
    assert caps.content_string.strip() == "control_d", "this domain is not the control domain"


def test_xen_device_nodes(host: Any) -> None:
    for node in ("/dev/xen/evtchn", "/dev/xen/privcmd", "/dev/xen/gntdev"):
        assert host.file(node).exists, f"{node} is missing: the dom0 kernel lacks its driver"


def test_hypervisor_is_the_built_one(host: Any, expect: dict[str, Any]) -> None:
    info = _xl_info(host)
    xen = expect.get("xen", {})
    running = f"{info['xen_major']}.{info['xen_minor']}{info['xen_extra']}"
    if "version" in xen:
        assert running.startswith(xen["version"]), \
            f"running Xen {running}, the build made {xen['version']}"
    if "build_id" in xen:
        assert xen["build_id"] in info["xen_extra"], \
            f"xl info xen_extra is {info['xen_extra']!r}: not the build {xen['build_id']}"


def test_domain0_listed_with_its_memory(host: Any, expect: dict[str, Any]) -> None:
    out = _output(host, "xl list")
    rows = [ln.split() for ln in out.splitlines()[1:]]
    dom0 = [r for r in rows if r and r[0] == "Domain-0"]
    assert dom0, f"xl list shows no Domain-0:\n{out}"
    want = expect.get("dom0", {}).get("memory_mib")
    if want:
        mem = int(dom0[0][2])
        assert abs(mem - want) <= max(16, want // 50), \
            f"Domain-0 has {mem} MiB, the recipe asks for {want} MiB (dom0_mem)"


def test_dom0_kernel_is_the_built_one(host: Any, expect: dict[str, Any]) -> None:
    release = host.check_output("uname -r")
    want = expect.get("dom0", {}).get("kernel_release")
    if want:
        assert release == want, f"dom0 runs kernel {release}, the build made {want}"
    else:
        assert release


@pytest.mark.parametrize("unit", ["xenstored", "xenconsoled"])
def test_xen_daemons_running(host: Any, unit: str) -> None:
    assert host.process.filter(comm=unit), f"{unit} is not running"


#: Xen's services under systemd: upstream's units and Debian's init script (``xen``)
XEN_UNITS = ("xenstored", "xenconsoled", "xen-init-dom0", "xencommons", "xen", "xendomains")


def _unit(name: str) -> str:
    return name if re.search(r"\.(service|socket|timer|mount|path|target)$", name) \
        else f"{name}.service"


def test_xen_services_active(host: Any, expect: dict[str, Any]) -> None:
    """The recipe's ``tests.services`` when it names them, else every Xen unit installed."""
    units = [_unit(u) for u in expect.get("services") or []] or [
        _unit(u) for u in XEN_UNITS if host.run(f"systemctl cat {_unit(u)}").rc == 0]
    assert units, f"none of the Xen services is installed ({', '.join(XEN_UNITS)})"
    states = {u: host.run(f"systemctl is-active {u}").stdout.strip() or "unknown"
              for u in units}
    down = {u: state for u, state in states.items() if state != "active"}
    assert not down, "Xen services not active: " + ", ".join(
        f"{u} ({state}; see journalctl -u {u})" for u, state in down.items())


def test_guest_bridge_up(host: Any, expect: dict[str, Any]) -> None:
    bridge = expect.get("bridge", "xenbr0")
    out = host.run(f"ip -o link show {bridge}")
    assert out.rc == 0, f"bridge {bridge} does not exist"
    assert re.search(r"state (UP|UNKNOWN)|<[^>]*\bUP\b", out.stdout), \
        f"bridge {bridge} is down: {out.stdout.strip()}"


def test_packages_are_the_built_ones(host: Any, expect: dict[str, Any]) -> None:
    if not expect.get("packages"):
        pytest.skip("no packages expected (xenforge test passes the built ones)")
    for name, version in expect.get("packages", {}).items():
        pkg = host.package(name)
        assert pkg.is_installed, f"package {name} is not installed"
        assert pkg.version == version, f"{name} {pkg.version} is installed, the build made " \
            f"{version}"
