"""dom0 health: the hypervisor, the toolstack, dom0's kernel and memory, services, bridge.

Every check reads one snapshot of the host (:func:`facts`: one command over SSH that
gathers ``xl info``, ``xl list``, the Xen device nodes, the processes, the state of every
Xen unit, the links and the package versions at once). Under emulation each command a check
sends costs seconds; one round trip for all of them keeps the suite fast on a slow host
without merging the checks: each still passes or fails on its own, with its own message.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Any

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Xen's services under systemd: upstream's units and Debian's init script (``xen``)
XEN_UNITS = ("xenstored", "xenconsoled", "xen-init-dom0", "xencommons", "xen", "xendomains")
DEVICES = ("/dev/xen/evtchn", "/dev/xen/privcmd", "/dev/xen/gntdev")
DAEMONS = ("xenstored", "xenconsoled")
MARK = "--- xenforge-section "


def _unit(name: str) -> str:
    return name if re.search(r"\.(service|socket|timer|mount|path|target)$", name) \
        else f"{name}.service"


def _script(units: list[str], packages: list[str]) -> str:
    """One shell script printing every section the checks read, each after a marker line
    with the command's exit status (so a failing command is reported, not mistaken) and
    its duration in milliseconds (where a slow host's time goes)."""
    sections = {
        # the snapshot is of a host that finished booting (its services settled), at most
        # five minutes from now: "running", or "degraded" when a unit failed
        "system": "timeout 300 systemctl is-system-running --wait",
        "capabilities": "cat /proc/xen/capabilities",
        "devices": "ls -1 " + " ".join(DEVICES),
        "xl-info": "xl info",
        "xl-list": "xl list",
        "uname": "uname -r",
        "processes": "ps -eo comm=",
        "units": "systemctl show --property=Id,LoadState,ActiveState,SubState,"
                 "InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic "
                 + " ".join(map(shlex.quote, units)),
        "links": "ip -o link show",
        "os-release": "cat /etc/os-release",
        "machine": "hostname; findmnt -n -o FSTYPE /",
        # where the boot's time went (no check reads it: the JUnit report keeps it), from
        # the manager's timestamps in one call: `systemd-analyze blame` asks for every
        # unit's (hundreds of D-Bus calls) and took 130 s of a 172 s snapshot in a TCG dom0
        "boot-time": "systemctl show --property=InitRDTimestampMonotonic,"
                     "UserspaceTimestampMonotonic,FinishTimestampMonotonic",
    }
    if packages:
        sections["packages"] = ("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' "
                                + " ".join(map(shlex.quote, packages)))
    # bash's clock (EPOCHREALTIME, microseconds; "." or "," as the locale has it) starts no
    # process: a `date` before and after each section were 26 more, each slow under emulation
    lines = []
    for name, command in sections.items():
        lines.append(f"t0=${{EPOCHREALTIME/[.,]/}}; out=$({command} 2>&1); rc=$?; "
                     f"echo '{MARK}{name}' $rc $(( (${{EPOCHREALTIME/[.,]/}} - t0) / 1000 )); "
                     'printf "%s\\n" "$out"')
    return "; ".join(lines)


def _parse(text: str, took: dict[str, float] | None = None) -> dict[str, tuple[int, str]]:
    """The sections of the script's output: name -> (exit status, output); each one's
    seconds into ``took``."""
    out: dict[str, tuple[int, str]] = {}
    name, rc, body = "", 0, []  # type: ignore[var-annotated]
    for line in text.splitlines():
        if line.startswith(MARK):
            if name:
                out[name] = (rc, "\n".join(body))
            name, *fields = line[len(MARK):].split()
            rc, body = int(fields[0]) if fields else 0, []
            if took is not None and len(fields) > 1 and fields[1].isdigit():
                took[name] = int(fields[1]) / 1000
        elif name:
            body.append(line)
    if name:
        out[name] = (rc, "\n".join(body))
    return out


@pytest.fixture(scope="module")
def facts(host: Any, expect: dict[str, Any],
          record_testsuite_property: Any) -> dict[str, tuple[int, str]]:
    """What the checks read, gathered in one command: section -> (exit status, output).
    The JUnit report gets the command's round trip and each section's seconds on the host
    (``dom0_snapshot_seconds``, ``dom0_section_<name>_seconds``)."""
    units = sorted({_unit(u) for u in [*(expect.get("services") or []), *XEN_UNITS]})
    packages = sorted(expect.get("packages", {}))
    command = "bash -c " + shlex.quote(_script(units, packages))
    for attempt in range(3):
        try:
            start = time.monotonic()
            res = host.run(command)
            record_testsuite_property("dom0_snapshot_seconds",
                                      round(time.monotonic() - start, 2))
            break
        except RuntimeError as exc:
            # the SSH transport failed (testinfra raises on ssh's exit 255, e.g. "Failed to
            # connect to new control master" under load), not the host: try it twice more
            if "exit_status=255" not in str(exc) or attempt == 2:
                raise
            time.sleep(5)
    took: dict[str, float] = {}
    found = _parse(res.stdout, took)
    for name, seconds in took.items():
        record_testsuite_property(f"dom0_section_{name.replace('-', '_')}_seconds", seconds)
    if "boot-time" in found:
        record_testsuite_property("dom0_boot_time", _boot_time(found))
    assert found, f"the host answered nothing useful (exit {res.rc}): {res.stderr.strip()}"
    return found


def _ok(facts: dict[str, tuple[int, str]], section: str, what: str) -> str:
    rc, out = facts.get(section, (127, "(not gathered)"))
    assert rc == 0, f"`{what}` failed with exit {rc}: {out.strip()[-500:]}"
    return out


def _xl_info(facts: dict[str, tuple[int, str]]) -> dict[str, str]:
    info = {}
    for line in _ok(facts, "xl-info", "xl info").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _blocks(text: str) -> list[dict[str, str]]:
    """``systemctl show``'s output: one KEY=VALUE block per unit (the manager's is one)."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
            continue
        key, _, value = line.partition("=")
        blocks[-1][key] = value
    return [b for b in blocks if b]


def _units(facts: dict[str, tuple[int, str]]) -> dict[str, dict[str, str]]:
    """systemctl show's blocks: unit -> {LoadState, ActiveState, SubState}."""
    return {b["Id"]: b for b in _blocks(_ok(facts, "units", "systemctl show")) if b.get("Id")}


def _usec(props: dict[str, str], key: str) -> int:
    """A systemd timestamp property in microseconds; 0 when absent or not a number."""
    value = props.get(key, "")
    return int(value) if value.isdigit() else 0


def _boot_time(facts: dict[str, tuple[int, str]]) -> str:
    """Where dom0's boot went, like ``systemd-analyze time`` and ``blame`` (for the units the
    suite asked about): "kernel 11.4s + userspace 92.1s = 103.5s; xendomains.service 56.6s,
    ..."; what the host did not say is left out."""
    rc, out = facts.get("boot-time", (1, ""))
    manager = (_blocks(out) or [{}])[0] if rc == 0 else {}
    start, initrd, finish = (_usec(manager, f"{k}TimestampMonotonic") / 1e6
                             for k in ("Userspace", "InitRD", "Finish"))
    parts = []
    if start and finish:
        parts.append(f"kernel {initrd or start:.1f}s"
                     + (f" + initrd {start - initrd:.1f}s" if initrd else "")
                     + f" + userspace {finish - start:.1f}s = {finish:.1f}s")
    units = []
    if facts.get("units", (1, ""))[0] == 0:
        for name, props in _units(facts).items():
            began = _usec(props, "InactiveExitTimestampMonotonic")
            up = _usec(props, "ActiveEnterTimestampMonotonic")
            if up >= began > 0:
                units.append((up - began, name))
    if units:
        parts.append(", ".join(f"{name} {us / 1e6:.1f}s"
                               for us, name in sorted(units, reverse=True)))
    return "; ".join(parts) or "(not reported)"


def test_dom0_runs_on_xen_as_control_domain(facts: dict[str, tuple[int, str]]) -> None:
    rc, caps = facts["capabilities"]
    assert rc == 0, "/proc/xen/capabilities is missing: dom0 is not running under Xen " \
        "(or xenfs is not mounted)"
    assert caps.strip() == "control_d", "this domain is not the control domain"


def test_xen_device_nodes(facts: dict[str, tuple[int, str]]) -> None:
    present = set(facts["devices"][1].split())
    for node in DEVICES:
        assert node in present, f"{node} is missing: the dom0 kernel lacks its driver"


def test_hypervisor_is_the_built_one(facts: dict[str, tuple[int, str]],
                                     expect: dict[str, Any]) -> None:
    info = _xl_info(facts)
    xen = expect.get("xen", {})
    running = f"{info['xen_major']}.{info['xen_minor']}{info['xen_extra']}"
    if "version" in xen:
        assert running.startswith(xen["version"]), \
            f"running Xen {running}, the build made {xen['version']}"
    if "build_id" in xen:
        assert xen["build_id"] in info["xen_extra"], \
            f"xl info xen_extra is {info['xen_extra']!r}: not the build {xen['build_id']}"


def test_domain0_listed_with_its_memory(facts: dict[str, tuple[int, str]],
                                        expect: dict[str, Any]) -> None:
    out = _ok(facts, "xl-list", "xl list")
    rows = [ln.split() for ln in out.splitlines()[1:]]
    dom0 = [r for r in rows if r and r[0] == "Domain-0"]
    assert dom0, f"xl list shows no Domain-0:\n{out}"
    want = expect.get("dom0", {}).get("memory_mib")
    if want:
        mem = int(dom0[0][2])
        assert abs(mem - want) <= max(16, want // 50), \
            f"Domain-0 has {mem} MiB, the recipe asks for {want} MiB (dom0_mem)"


def test_the_guests_it_autostarts_run_and_no_other(facts: dict[str, tuple[int, str]],
                                                   expect: dict[str, Any]) -> None:
    """Each guest the recipe autostarts was created at boot (xendomains, from
    ``/etc/xen/auto``) and xl lists it; a guest that does not autostart does not run (the
    snapshot is taken before the guests suite creates any), and a live ISO starts none."""
    guests = {g["name"]: bool(g.get("autostart")) for g in expect.get("guests", [])}
    live = expect.get("machine", {}).get("medium") == "live ISO"
    out = _ok(facts, "xl-list", "xl list")
    listed = {ln.split()[0] for ln in out.splitlines()[1:] if ln.split()}
    started = {name for name, auto in guests.items() if auto and not live}
    missing = sorted(started - listed)
    assert not missing, f"guests the recipe autostarts are not running: {missing}\n{out}"
    unasked = sorted((set(guests) - started) & listed)
    assert not unasked, (f"guests that do not start at boot here are running: {unasked}"
                         f"{' (a live ISO starts none)' if live else ''}\n{out}")


def test_dom0_kernel_is_the_built_one(facts: dict[str, tuple[int, str]],
                                      expect: dict[str, Any]) -> None:
    release = _ok(facts, "uname", "uname -r").strip()
    want = expect.get("dom0", {}).get("kernel_release")
    if want:
        assert release == want, f"dom0 runs kernel {release}, the build made {want}"
    else:
        assert release


@pytest.mark.parametrize("daemon", DAEMONS)
def test_xen_daemons_running(facts: dict[str, tuple[int, str]], daemon: str) -> None:
    running = set(_ok(facts, "processes", "ps").split())
    assert daemon in running, f"{daemon} is not running"


def test_xen_services_active(facts: dict[str, tuple[int, str]], expect: dict[str, Any]) -> None:
    """The recipe's ``tests.services`` when it names them, else every Xen unit installed."""
    units = _units(facts)
    wanted = [_unit(u) for u in expect.get("services") or []] or [
        _unit(u) for u in XEN_UNITS if units.get(_unit(u), {}).get("LoadState") == "loaded"]
    assert wanted, f"none of the Xen services is installed ({', '.join(XEN_UNITS)})"
    down = {u: units.get(u, {}) for u in wanted if units.get(u, {}).get("ActiveState") !=
            "active"}
    system = facts.get("system", (0, ""))[1].strip().splitlines()[-1:] or ["unknown"]
    assert not down, f"Xen services not active (system: {system[0]}): " + ", ".join(
        f"{u} ({s.get('ActiveState', 'unknown')}/{s.get('SubState', '?')}, "
        f"{s.get('LoadState', 'not found')}; see journalctl -u {u})" for u, s in down.items())


def test_guest_bridge_up(facts: dict[str, tuple[int, str]], expect: dict[str, Any]) -> None:
    bridge = expect.get("bridge", "xenbr0")
    links = _ok(facts, "links", "ip -o link show").splitlines()
    line = next((ln for ln in links if re.match(rf"^\d+: {re.escape(bridge)}[:@]", ln)), None)
    assert line is not None, f"bridge {bridge} does not exist"
    assert re.search(r"state (UP|UNKNOWN)|<[^>]*\bUP\b", line), \
        f"bridge {bridge} is down: {line.strip()}"


def test_the_system_is_the_target_release(facts: dict[str, tuple[int, str]],
                                          expect: dict[str, Any]) -> None:
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$',
                                 _ok(facts, "os-release", "cat /etc/os-release"), re.M))
    want = expect.get("os", {})
    if not want:
        pytest.skip("no release expected (xenforge test passes the target's)")
    assert os_release.get("VERSION_CODENAME") == want.get("codename"), \
        f"dom0 runs {os_release.get('PRETTY_NAME')}, the build targets {want.get('codename')}"


def test_packages_are_the_built_ones(facts: dict[str, tuple[int, str]],
                                     expect: dict[str, Any]) -> None:
    if not expect.get("packages"):
        pytest.skip("no packages expected (xenforge test passes the built ones)")
    installed = {}
    for line in facts.get("packages", (1, ""))[1].splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith(("ii", "hi")):
            installed[parts[0]] = parts[1]
    for name, version in expect["packages"].items():
        assert name in installed, f"package {name} is not installed"
        assert installed[name] == version, f"{name} {installed[name]} is installed, the " \
            f"build made {version}"


def test_the_machine_is_the_one_booted(facts: dict[str, tuple[int, str]],
                                       expect: dict[str, Any]) -> None:
    """Its root filesystem is of the medium it booted from (ext4 of a disk, the overlay of
    a live ISO) and its hostname the one it was given (an install's, the image's)."""
    lines = _ok(facts, "machine", "hostname; findmnt /").splitlines()
    assert len(lines) == 2, f"unexpected output: {lines}"
    hostname, fstype = lines
    want = expect.get("machine", {})
    if not want:
        pytest.skip("no machine expected (xenforge test passes the booted medium's)")
    if want.get("root_fstype"):
        assert fstype == want["root_fstype"], \
            f"/ is {fstype}, the booted medium ({want.get('medium')}) gives {want['root_fstype']}"
    if want.get("hostname"):
        assert hostname == want["hostname"], f"hostname is {hostname}, not {want['hostname']}"
