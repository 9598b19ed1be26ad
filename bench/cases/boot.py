"""Boot and verify: the recipe's dom0 disk booted by ``xenforge boot`` (QEMU start to dom0
ready), then each suite run against it by ``xenforge test --host`` (the dom0 suite's checks
and each guest's life cycle, from their JUnit reports), and the cost of an SSH command into
the emulated dom0 with and without connection reuse (OpenSSH's ControlMaster), medians.
The dom0 suite runs twice: at once when dom0 is ready - while the guests it starts at boot
are still booting on the same two emulated CPUs (an HVM guest's device model in dom0
itself) - and again after the guests suite, on a settled host, so the report shows what the
checks cost and what the contention adds.
Targets: the dom0 suite <= 30 s once the VM is ready; each guest ready <= 60 s."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import XENFORGE, Outcome, Settings, Table, Target, clock, median, timed, xenforge

NAME, TITLE, QUICK = "boot", "Boot and verify (QEMU, testinfra over SSH)", False
#: SSH commands timed each way
SSH_RUNS = 10
#: (suite, label in the report): the dom0 suite at ready and once the guests are up
RUNS = (("dom0", "dom0"), ("guests", "guests"), ("dom0", "dom0-settled"))
LABELS = {"dom0": "dom0 suite at ready (the boot's guests still starting)",
          "guests": "guests suite", "dom0-settled": "dom0 suite again, the guests up"}
READY = re.compile(r"^ready after (\d+)s: (\S+)")


def _junit(path: Path) -> tuple[float, list[tuple[str, float, bool, dict[str, str]]]]:
    """(suite seconds, [(test, seconds, passed, properties)]) of a JUnit file."""
    root = ET.parse(path).getroot()
    cases = []
    total = 0.0
    for suite in root.iter("testsuite"):
        total += float(suite.get("time", "0"))
    for case in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        failed = case.find("failure") is not None or case.find("error") is not None
        cases.append((case.get("name", ""), float(case.get("time", "0")), not failed, props))
    return total, cases


def _suite_properties(path: Path) -> dict[str, str]:
    """The properties a JUnit file's test suites recorded (record_testsuite_property)."""
    root = ET.parse(path).getroot()
    return {p.get("name", ""): p.get("value", "") for suite in root.iter("testsuite")
            for props in suite.findall("properties") for p in props.iter("property")}


def _ssh(url: str, key: str, known: str, control: Path | None) -> list[float]:
    """Seconds of SSH_RUNS ``true`` commands into the VM (a master connection first when
    ``control`` is set)."""
    parts = urlsplit(url)
    base = ["ssh", "-p", str(parts.port or 22), "-i", key, "-o", f"UserKnownHostsFile={known}",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if control is not None:
        base += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
                 "-o", "ControlPersist=60"]
    dest = f"{parts.username or 'root'}@{parts.hostname}"
    if control is not None:
        timed([*base, dest, "true"]).check()  # the master connection
    times = [timed([*base, dest, "true"]).check().wall for _ in range(SSH_RUNS)]
    if control is not None:
        subprocess.run([*base, "-O", "exit", dest], capture_output=True, check=False)
    return times


def run(settings: Settings) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    out = settings.work / "boot-out"
    xenforge(settings, "build", settings.recipe, "-o", out, "--quiet").check()
    start = time.monotonic()
    vm = subprocess.Popen([os.fspath(XENFORGE), "--cache-dir", os.fspath(settings.cache),
                           "boot", os.fspath(settings.recipe), "-o", os.fspath(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = ready = None
        key = known = ""
        assert vm.stdout is not None
        for line in vm.stdout:
            m = READY.match(line.strip())
            if m:
                ready, url = time.monotonic() - start, m[2]
            if "--identity" in line:
                key = line.split("--identity ")[1].split()[0]
                known = line.split("--known-hosts ")[1].split()[0]
                break
        if url is None or ready is None:
            raise RuntimeError(f"xenforge boot ended without a ready line (exit {vm.wait()})")
        rows = [["QEMU start to dom0 ready (SSH answers)", clock(ready)]]
        suites = {}
        for suite, label in RUNS:
            junit = settings.work / f"boot-{label}.xml"
            run = xenforge(settings, "test", settings.recipe, "-o", out, "--host", url,
                           "--identity", key, "--known-hosts", known, "--suite", suite,
                           "--junit", junit)
            total, cases = _junit(junit)
            suites[label] = {"wall": round(run.wall, 1), "junit_seconds": round(total, 1),
                             "ok": run.rc == 0,
                             "cases": {n: round(s, 1) for n, s, _ok, _p in cases}}
            rows.append([f"{LABELS[label]} ({len(cases)} checks, "
                         f"{'passed' if run.rc == 0 else 'FAILED'}): xenforge test wall",
                         clock(run.wall)])
            for name, seconds, ok, props in cases:
                extra = ", ".join(f"{k}={v}" for k, v in props.items() if k.startswith(
                    ("ready", "bench_write", "bench_read")))
                rows.append([f"  {name}" + ("" if ok else " (FAILED)")
                             + (f" [{extra}]" if extra else ""), clock(seconds)])
            if suite == "dom0":
                outcome.targets.append(Target(LABELS[label], total, 30))
                for name, value in _suite_properties(junit).items():  # where its time goes
                    if name == "dom0_boot_time":
                        if label == "dom0":  # the same boot both times
                            outcome.notes.append("dom0's boot (kernel, userspace, each "
                                                 "unit the suite checks):"
                                                 "\n\n```\n" + value + "\n```")
                    elif name.startswith("dom0_"):
                        rows.append([f"  {name.removeprefix('dom0_').replace('_', ' ')}",
                                     clock(float(value))])
                        suites[label][name] = float(value)
            else:
                for name, _s, _ok, props in cases:
                    for k, v in props.items():
                        if k.endswith("ready_seconds"):
                            outcome.targets.append(Target(f"{name} {k}", float(v), 60))
        plain = _ssh(url, key, known, None)
        reused = _ssh(url, key, known, settings.work / "bench-ssh-%C")
        rows += [[f"SSH command, new connection each (median of {SSH_RUNS})",
                  clock(median(plain))],
                 [f"SSH command over one reused connection (median of {SSH_RUNS})",
                  clock(median(reused))]]
        outcome.tables.append(Table(["step", "time"], rows))
        outcome.figures = {"dom0_ready_seconds": round(ready, 1), "suites": suites,
                           "ssh_new_connection": [round(t, 3) for t in plain],
                           "ssh_reused_connection": [round(t, 3) for t in reused]}
    finally:
        vm.send_signal(signal.SIGTERM)
        try:
            vm.wait(timeout=120)
        except subprocess.TimeoutExpired:
            vm.kill()
    return outcome
