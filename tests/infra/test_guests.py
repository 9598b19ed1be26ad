"""Guest lifecycle: for each guest of the recipe, create it, see it reach userspace on Xen in
the right mode with the built kernel, shut it down cleanly, and create it once more.

Contract with the guest image (xenforge's ``xen-domu`` element): when userspace is up the
guest prints ``XENFORGE-GUEST-READY type=... guest_type=... kernel=... root=... root_driver=...
nic_driver=... xen_frontends=...`` on its console, and dom0's xenconsoled logs guest consoles
to ``/var/log/xen/console/guest-NAME.log`` (an HVM guest that boots its own disk has its
console on the serial port, which its device model writes to the expectation's
``console_log``). A disk whose first bytes say ``XENFORGE-BENCH <MiB>`` makes the guest
measure it with ``dd`` (O_DIRECT) and print ``XENFORGE-GUEST-BENCH ... write_mib_s=...
read_mib_s=...`` before the ready line: the last boot of an HVM guest gets one.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Any

MARKER = "XENFORGE-GUEST-READY"
BENCH_MARKER = "XENFORGE-GUEST-BENCH"
#: MiB the throughput check writes and reads back inside an HVM guest (small: the emulated
#: disk under QEMU TCG moves a few MiB/s)
BENCH_MIB = 64
#: the device model libxl starts for an HVM guest (Debian's qemu-system-xen)
DEVICE_MODEL = "xen-qemu-system-i386"


def _log_size(host: Any, log: str) -> int:
    out = host.run(f"stat -c %s {shlex.quote(log)}")
    return int(out.stdout.strip()) if out.rc == 0 else 0


def _wait_ready(host: Any, log: str, offset: int, timeout: int) -> str:
    q, start = shlex.quote(log), offset + 1
    # complete lines only: a slow console (an emulated UART) is read while the guest is
    # still writing the ready line
    script = (f"until n=$(tail -c +{start} {q} 2>/dev/null | tr -cd '\\n' | wc -c) && "
              f"tail -c +{start} {q} | head -n \"$n\" | grep -a -m1 {MARKER}; "
              "do sleep 2; done")
    out = host.run(f"timeout {timeout} sh -c {shlex.quote(script)}")
    if out.rc != 0:
        tail = host.run(f"tail -c +{offset + 1} {q} | tail -n 25").stdout
        raise AssertionError(f"no {MARKER} on the guest console within {timeout}s; "
                             f"its console said last:\n{tail}")
    return str(out.stdout)


def _free_mib(host: Any) -> int | None:
    m = re.search(r"^free_memory\s*:\s*(\d+)", host.run("xl info").stdout, re.M)
    return int(m.group(1)) if m else None


def _create_failed(host: Any, guest: dict[str, Any], cfg: str, attempt: str,
                   stderr: str) -> str:
    """One line that says why ``xl create`` failed (then xl's own words)."""
    # the first error is the cause; libxl's clean-up errors follow it
    errors = [ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()]
    why = errors[0] if errors else (stderr.strip().splitlines() or ["no output"])[-1]
    free, want = _free_mib(host), guest.get("memory")
    room = ""
    if free is not None and want and free < int(want):
        room = (f"; Xen has only {free} MiB free and the guest asks {want} MiB "
                "(dom0_mem or the other guests leave no room)")
    return f"{attempt} xl create {cfg} failed: {why}{room}\n{stderr}"


def _listed(host: Any, name: str) -> bool:
    return bool(host.run(f"xl list {shlex.quote(name)}").rc == 0)


def _gone(host: Any, name: str, timeout: int) -> bool:
    """Wait until ``xl list`` no longer shows the domain; False if it still does."""
    script = f"while xl list {shlex.quote(name)} >/dev/null 2>&1; do sleep 1; done"
    return bool(host.run(f"timeout {timeout} sh -c {shlex.quote(script)}").rc == 0)


def _banner_offset(host: Any, log: str) -> int | None:
    """Where the guest's current boot starts in its console log: the last kernel banner
    (the console replays the kernel's log from its first line), or None without one."""
    out = host.run(f"grep -a -b -o 'Linux version' {shlex.quote(log)} | tail -n 1")
    first = out.stdout.split(":", 1)[0].strip() if out.rc == 0 else ""
    return int(first) if first.isdigit() else None


def _check_boot(host: Any, guest: dict[str, Any], ready: str) -> None:
    """The ready line and ``xl list`` say what the recipe asks: on Xen, in the recipe's mode,
    the target's OS, the built kernel, the memory."""
    name = guest["name"]
    fields = dict(re.findall(r"(\w+)=(\S+)", ready))
    assert fields.get("type") == "xen", f"guest {name} is not on Xen: {ready.strip()}"
    want_mode = guest.get("type", "").upper()
    if want_mode:
        assert fields.get("guest_type") == want_mode, \
            f"guest {name} runs as {fields.get('guest_type')}, the recipe asks {want_mode}"
    if guest.get("os"):
        assert fields.get("os") == guest["os"], \
            f"guest {name} runs {fields.get('os')}, the build targets {guest['os']}"
    if guest.get("kernel_release"):
        assert fields.get("kernel") == guest["kernel_release"], \
            f"guest {name} runs kernel {fields.get('kernel')}, built {guest['kernel_release']}"
    _check_devices(guest, fields, ready)
    if guest.get("memory"):
        row = host.check_output(f"xl list {name}").splitlines()[-1].split()
        assert abs(int(row[2]) - int(guest["memory"])) <= 2, \
            f"guest {name} has {row[2]} MiB, the recipe asks {guest['memory']} MiB"


def _check_devices(guest: dict[str, Any], fields: dict[str, str], ready: str) -> None:
    """The guest's root disk and NIC are Xen's PV devices (blkfront ``vbd``, netfront
    ``vif``), except in an HVM guest without PV drivers: emulated disk and e1000, and no
    Xen frontend bound at all."""
    name, line = guest["name"], ready.strip()
    if "root_driver" not in fields:  # a guest image older than the device fields
        return
    if guest.get("type") == "hvm" and guest.get("pv_drivers") is False:
        assert fields.get("root_driver") != "vbd" and not fields.get("root", "").startswith(
            "xvd"), f"guest {name} (no PV drivers) has its root disk on blkfront: {line}"
        assert fields.get("nic_driver") == "e1000", \
            f"guest {name} (no PV drivers) should see the emulated e1000 NIC: {line}"
        assert fields.get("xen_frontends") == "0", \
            f"guest {name} (no PV drivers) has Xen frontends bound: {line}"
        return
    assert fields.get("root", "").startswith("xvd") and fields.get("root_driver") == "vbd", \
        f"guest {name}'s root disk is not a Xen PV disk (xvd*, blkfront): {line}"
    assert fields.get("nic_driver") == "vif", \
        f"guest {name}'s NIC is not Xen's netfront: {line}"


def _device_models(host: Any, name: str) -> list[str]:
    """dom0's device-model processes of the guest (libxl starts them with ``-name NAME``)."""
    out = host.run(f"pgrep -a -f {shlex.quote(DEVICE_MODEL)}").stdout
    return [ln for ln in out.splitlines() if re.search(rf"-name {re.escape(name)}(\s|$)", ln)]


def _bench_config(host: Any, guest: dict[str, Any], cfg: str) -> str:
    """A copy of the guest's config with a scratch disk the guest measures (see the module
    docstring): emulated (hdb) for a guest without PV drivers, blkfront (xvdb) else."""
    name = guest["name"]
    disk, copy = f"/var/tmp/xenforge-bench-{name}.raw", f"/var/tmp/xenforge-bench-{name}.cfg"
    vdev = "hdb" if guest.get("pv_drivers") is False else "xvdb"
    script = (f"rm -f {disk} && truncate -s {BENCH_MIB + 2}M {disk} && "
              f"printf 'XENFORGE-BENCH {BENCH_MIB}\\n' | dd of={disk} conv=notrunc "
              f"status=none && sed -E 's|^disk = \\[ (.*) \\]$|disk = [ \\1, "
              f"\"format=raw, vdev={vdev}, access=rw, target={disk}\" ]|' {cfg} > {copy} "
              f"&& grep -q 'vdev={vdev}' {copy}")
    made = host.run(f"sh -c {shlex.quote(script)}")
    assert made.rc == 0, f"cannot write the benchmark config of {name}: {made.stderr}"
    return copy


def _shutdowns(host: Any, name: str) -> list[tuple[int, int]]:
    """(domain id, reason code) of the guest's shutdowns since its ``xl create``, from the
    log of xl's daemon for it (rotated by each create; ``Domain N has shut down, reason code
    R``): 0 power off, 1 reboot (a triple fault is one), 3 crash. A reboot restarts the guest
    under a new domain id."""
    out = host.run(f"grep -a -o 'Domain [0-9]* has shut down, reason code [0-9]*' "
                   f"/var/log/xen/xl-{shlex.quote(name)}.log").stdout
    return [(int(d), int(r)) for d, r in re.findall(r"Domain (\d+) .*reason code (\d+)", out)]


def _under_tcg(host: Any) -> bool:
    """dom0 runs in QEMU's TCG (its CPU says so): an emulated CPU with emulated AMD-V."""
    return bool(host.run("grep -q -m1 'QEMU TCG' /proc/cpuinfo").rc == 0)


def _triple_faulted(host: Any, domid: int) -> bool:
    """Xen logged a triple fault of domain ``domid`` (``d3v0 Triple fault - invoking HVM
    shutdown action 1``; the default recipe's console ring holds a whole test run)."""
    return bool(host.run(f"xl dmesg | grep -a -q -E 'd{domid}v[0-9]+ Triple fault'").rc == 0)


class Restarted(AssertionError):
    """The guest rebooted or crashed on its own between its create and its shutdown.
    ``emulator``: every restart was a triple fault Xen logged, with dom0 under QEMU's TCG,
    whose emulated AMD-V triple-faults HVM and PVH guests now and then (see the README)."""

    def __init__(self, message: str, emulator: bool) -> None:
        super().__init__(message)
        self.emulator = emulator


def _why_restarted(host: Any, name: str, log: str) -> str:
    """What to read when a guest rebooted or crashed on its own: the lines of xl's daemon
    log, the console lines that say why a kernel restarts (a panic, an oops, a reboot), the
    console's last lines, and what Xen said about a triple fault or a crash. The console of a
    PV, PVH or PVHVM guest is xenconsoled's log, which a restart appends to; an emulated
    serial port's log starts again with each boot, so only the last boot is in it."""
    q = shlex.quote
    xl = host.run(f"tail -n 20 /var/log/xen/xl-{q(name)}.log").stdout
    why = host.run(f"grep -a -n -i -E 'panic|oops|BUG:|general protection|double fault|"
                   f"reboot: |restarting system|watchdog' {q(log)} | tail -n 12").stdout
    tail = host.run(f"tail -n 15 {q(log)}").stdout
    xen = host.run("xl dmesg | grep -a -i -E -A4 'triple fault|crash|unhandled' "
                   "| tail -n 20").stdout
    return (f"xl's log:\n{xl}\nthe console on panics and restarts ({log}):\n"
            f"{why or '(nothing)'}\nthe console's last lines:\n{tail}\n"
            f"Xen said:\n{xen or '(nothing on a triple fault or crash)'}")


def _shut_down(host: Any, name: str, *, acpi: bool = False, log: str = "") -> None:
    """``xl shutdown`` and see the domain go (a clean stop, not a destroy). ``acpi``: an HVM
    guest, which may have no PV control interface (``-F``: then an ACPI power button)."""
    fallback = "-F " if acpi else ""
    stopped = host.run(f"timeout 600 xl shutdown {fallback}-w {name}")
    if stopped.rc != 0:
        host.run(f"xl destroy {name}")
        raise AssertionError(f"guest {name} did not shut down cleanly within 600s "
                             "(destroyed instead)")
    # `xl shutdown -w` returns at the shutdown; the domain is gone once xl's daemon for it
    # has destroyed it, a moment later (seconds under emulation). A domain left in the
    # shutdown state ("s") has stopped cleanly: only its record remains to be removed.
    shutdowns = _shutdowns(host, name)
    if any(reason for _domid, reason in shutdowns):
        why = _why_restarted(host, name, log or f"/var/log/xen/console/guest-{name}.log")
        host.run(f"xl destroy {name}")
        restarts = [(d, r) for d, r in shutdowns if r]
        emulator = all(r == 1 and _triple_faulted(host, d) for d, r in restarts) \
            and _under_tcg(host)
        raise Restarted(f"guest {name} did not simply power off: Xen's shutdown reason codes "
                        f"{[r for _d, r in shutdowns]} (1 = reboot, 3 = crash) since its "
                        f"create" + (" (triple faults under QEMU's TCG)" if emulator else "")
                        + f".\n{why}", emulator)
    if not _gone(host, name, 60):
        listing = host.run(f"xl list {name}").stdout
        state = listing.splitlines()[-1].split()[4] if listing.strip() else ""
        assert "s" in state, (f"guest {name} still runs 60s after a clean shutdown:\n"
                              f"{listing}")
        host.run(f"xl destroy {name}")


def _report_bench(host: Any, guest: dict[str, Any], log: str, offset: int,
                  record_property: Any) -> None:
    """The guest's throughput line: printed, and kept in the JUnit report's properties."""
    out = host.run(f"tail -c +{offset + 1} {shlex.quote(log)} | grep -a -m1 {BENCH_MARKER}")
    line = out.stdout.strip()
    assert line, f"guest {guest['name']} printed no {BENCH_MARKER} line for its scratch disk"
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert "write_mib_s" in fields and "read_mib_s" in fields, \
        f"guest {guest['name']}: the disk benchmark failed: {line}"
    want = "sd" if guest.get("pv_drivers") is False else "vbd"
    assert fields.get("driver") == want, \
        f"guest {guest['name']} measured a {fields.get('driver')} disk, expected {want}: {line}"
    print(f"\n{guest['name']}: {line}")
    for key in ("driver", "mib", "write_mib_s", "read_mib_s"):
        record_property(f"bench_{key}", fields.get(key, ""))


def test_guest_lifecycle(host: Any, guest: dict[str, Any], record_property: Any) -> None:
    """Two boots of the guest, each checked and shut down cleanly. A guest the recipe
    autostarts was started by dom0's xendomains (all of them at once, while the dom0 suite
    ran): that boot is the first one, and proves the autostart; then ``xl create`` once
    more. Any other guest found running (left by an earlier run) is stopped first and
    created twice. An expectation ``boots: 1`` checks one boot only (the autostarted one,
    else one ``xl create``): the recipe's ``tests.guest_boots`` asks for that, for every
    guest or per guest (the default recipe: its PVHVM guest alone boots twice). An HVM
    guest's device model must be gone with it, and its last boot measures disk throughput
    (see the module docstring)."""
    name = guest["name"]
    cfg = guest.get("config", f"/etc/xen/{name}.cfg")
    log = guest.get("console_log", f"/var/log/xen/console/guest-{name}.log")
    # the device model truncates a serial-port log when it starts the guest
    truncated = log.endswith("-serial.log")
    hvm = guest.get("type") == "hvm"
    timeout = int(guest.get("timeout", 900))  # a ceiling: PVH under TCG took 7 min (slow host)
    attempts = ["first", "second"][:max(1, int(guest.get("boots", 2)))]
    redo = [1]  # one boot is redone after a triple fault of QEMU's emulated AMD-V, no more

    def emulator_fault(exc: Restarted) -> bool:
        """A boot to redo: the guest restarted on an emulator triple fault, the first time."""
        if not exc.emulator or not redo[0]:
            return False
        redo[0] -= 1
        record_property("emulator_triple_fault_redone", str(exc).splitlines()[0])
        print(f"\nWARNING: boot redone once: {exc}")
        return True

    if _listed(host, name):
        booting = _banner_offset(host, log) if guest.get("autostart") else None
        if booting is not None:
            _check_boot(host, guest, _wait_ready(host, log, booting, timeout))
            try:
                _shut_down(host, name, acpi=hvm, log=log)
                attempts = attempts[1:]
            except Restarted as exc:  # autostarted and booted; both created boots follow
                if not emulator_fault(exc):
                    raise
        else:
            host.run(f"timeout 120 xl shutdown -F -w {name} || xl destroy {name}")
            if not _gone(host, name, 60):
                host.run(f"xl destroy {name}")
    while attempts:
        attempt = attempts[0]
        # an HVM guest's last boot measures a scratch disk (the point of PV drivers)
        bench = hvm and len(attempts) == 1  # the last boot (the second, or the only one)
        config = _bench_config(host, guest, cfg) if bench else cfg
        if truncated:
            host.run(f"rm -f {shlex.quote(log)}")
        offset = _log_size(host, log)
        begun = time.monotonic()
        created = host.run(f"xl create {shlex.quote(config)}")
        assert created.rc == 0, _create_failed(host, guest, config, attempt, created.stderr)
        ready = _wait_ready(host, log, offset, timeout)
        # `xl create` to the ready line on the console (seen over SSH: within ~2 s)
        record_property(f"{attempt}_ready_seconds", round(time.monotonic() - begun, 1))
        _check_boot(host, guest, ready)
        if bench:
            _report_bench(host, guest, log, offset, record_property)
        try:
            _shut_down(host, name, acpi=hvm, log=log)
        except Restarted as exc:
            if emulator_fault(exc):
                continue  # the same boot once more
            raise
        attempts = attempts[1:]
        if hvm:
            left = _device_models(host, name)
            assert not left, f"guest {name} is gone but its device model still runs: {left}"


def test_hvm_guest_without_device_model_fails_saying_why(host: Any,
                                                         hvm_guest: dict[str, Any]) -> None:
    """An HVM guest whose device model is missing fails ``xl create`` with one line that
    names it, and leaves no domain behind."""
    name = hvm_guest["name"]
    cfg = hvm_guest.get("config", f"/etc/xen/{name}.cfg")
    missing = "/usr/libexec/xenforge-test-no-such-device-model"
    broken = f"/var/tmp/xenforge-broken-{name}.cfg"
    script = (f"sed -e 's|^name = .*|name = \"{name}-broken\"|' {cfg} > {broken} && "
              f"echo 'device_model_override = \"{missing}\"' >> {broken}")
    assert host.run(f"sh -c {shlex.quote(script)}").rc == 0
    created = host.run(f"xl create {broken}")
    assert created.rc != 0, f"xl create succeeded without a device model:\n{created.stdout}"
    why = _create_failed(host, hvm_guest, broken, "broken", created.stderr).splitlines()[0]
    assert missing in why and "not executable" in why, why
    assert not _listed(host, f"{name}-broken"), f"{name}-broken is left in xl list"


def test_hvm_device_model_runs_on_the_built_libraries(host: Any,
                                                      hvm_guest: dict[str, Any]) -> None:
    """Debian's device model is installed and loads xenforge's Xen libraries (whose package
    provides the libxen* names it depends on), not Debian's; hvmloader is the built one."""
    path = f"/usr/libexec/{DEVICE_MODEL}"
    assert host.file(path).is_file, f"no device model {path} (Debian's qemu-system-xen)"
    # one round trip: the owner of each Xen library the device model loads, and hvmloader's
    script = (f"for lib in $(ldd {path} | awk '/libxen/ {{print $3}}'); do "
              'dpkg -S "$(readlink -f "$lib")" || echo "none: $lib"; done; '
              "echo hvmloader; dpkg -S /usr/lib/xen/boot/hvmloader || echo none; "
              "test -f /usr/share/seabios/bios-256k.bin || echo 'none: SeaBIOS'")
    lines = host.check_output(f"sh -c {shlex.quote(script)}").splitlines()
    owners = [ln for ln in lines if ln != "hvmloader"]
    assert len(owners) > 2, f"{path} links no Xen library: {lines}"
    wrong = [ln for ln in owners if not ln.startswith("xenforge-xen-utils:")]
    assert not wrong, f"not from xenforge-xen-utils: {wrong}"
