"""``xenforge test --inventory``: the suites against every host of an inventory, in parallel,
merged into one JUnit XML file (a ``<testsuite>`` per host, each check's classname prefixed
with the host's name) and a table.

A host that does not accept a TCP connection on its SSH port within :data:`PROBE_TIMEOUT`
fails its ``reachable`` check and runs nothing else; the other hosts go on. Each host keeps
its own pytest log and JUnit file in ``<logs>/<host>/``.
"""

from __future__ import annotations

import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.verify.inventory import Host
from xenforge.verify.suites import Failure, Outcome, run_suites

#: seconds a host has to accept a TCP connection on its SSH port
PROBE_TIMEOUT = 5.0
#: parallel hosts by default (at most; each runs one pytest and one SSH connection)
DEFAULT_JOBS = 4
#: the name of the check every host has first
REACHABLE = "reachable"
#: failures of one host listed in the summary (the JUnit XML has them all)
SHOWN_FAILURES = 5


@dataclass
class HostResult:
    host: Host
    outcome: Outcome  # its checks, ``reachable`` included; failures named HOST::...
    cases: list[ET.Element]  # its testcases for the merged JUnit XML
    log: Path
    reachable: bool

    @property
    def status(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "ok" if self.outcome.ok else "FAILED"


@dataclass
class FleetResult:
    hosts: list[HostResult]  # in the inventory's order
    junit: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and all(r.outcome.ok for r in self.hosts)

    def total(self) -> Outcome:
        """Every host's checks as one outcome (failures named HOST::check)."""
        out = Outcome(junit=self.junit, seconds=self.seconds)
        for r in self.hosts:
            out.tests += r.outcome.tests
            out.skipped += r.outcome.skipped
            out.failures += r.outcome.failures
        return out

    def table(self) -> str:
        head = ("host", "address", "checks", "passed", "failed", "seconds", "status")
        rows = [head] + [
            (r.host.name, f"{r.host.address}:{r.host.port}", str(r.outcome.tests),
             str(r.outcome.passed), str(len(r.outcome.failures)),
             f"{r.outcome.seconds:.0f}", r.status)
            for r in self.hosts
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        numeric = {2, 3, 4, 5}
        return "\n".join(
            "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows)

    def summary(self) -> str:
        """The table, the overall line, each host's first failures and its log, the JUnit
        file."""
        ok = sum(r.outcome.ok for r in self.hosts)
        checks = self.total().summary().splitlines()[0]
        lines = [self.table(), "",
                 f"{len(self.hosts)} hosts, {ok} ok, {len(self.hosts) - ok} failed; "
                 f"checks: {checks}"]
        for r in self.hosts:
            shown = r.outcome.failures[:SHOWN_FAILURES]
            lines += [f"  FAILED {f.test}: {f.message}" for f in shown]
            if len(r.outcome.failures) > len(shown):
                lines.append(f"  ... {len(r.outcome.failures) - len(shown)} more failed on "
                             f"{r.host.name} (all in the JUnit XML)")
            if r.reachable and not r.outcome.ok:
                lines.append(f"  log of {r.host.name}: {r.log}")
        lines.append(f"  JUnit XML: {self.junit}")
        return "\n".join(lines)


def probe(address: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when ``address:port`` accepts a TCP connection, else why not, for people."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except TimeoutError:
        why = f"no answer in {timeout:.0f}s"
    except OSError as exc:  # refused, no route, unknown name (socket.gaierror)
        why = exc.strerror or str(exc)
    return f"cannot connect to {address}:{port} ({why})"


def _case(classname: str, name: str, seconds: float, failure: str | None = None
          ) -> ET.Element:
    case = ET.Element("testcase", classname=classname, name=name, time=f"{seconds:.3f}")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure).text = failure
    return case


def _junit_cases(path: Path, host: str) -> list[ET.Element]:
    """The testcases of one host's pytest JUnit file, classnames prefixed with ``host``."""
    if not path.is_file():
        return []
    cases = list(ET.parse(path).getroot().iter("testcase"))
    for case in cases:
        classname = case.get("classname", "")
        case.set("classname", f"{host}.{classname}" if classname else host)
    return cases


def check_host(host: Host, *, workdir: Path, expect: dict[str, Any], builtin: Sequence[str],
               extra: Sequence[Path], identity: Path | None, known_hosts: Path | None,
               timeout: float = 3600) -> HostResult:
    """Probe one host, then (when it answers) run the suites against it."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "verify.log"
    log.unlink(missing_ok=True)
    start = time.monotonic()
    why = probe(host.address, host.port)
    took = time.monotonic() - start
    reach = _case(host.name, REACHABLE, took, why)
    if why is not None:
        log.write_text(why + "\n")
        outcome = Outcome(tests=1, failures=[Failure(f"{host.name}::{REACHABLE}", why)],
                          seconds=took)
        return HostResult(host, outcome, [reach], log, reachable=False)
    junit = workdir / "junit.xml"
    try:
        ran = run_suites(host.url, expect=expect, junit=junit, log=log, builtin=builtin,
                         extra=extra, identity=host.key or identity, known_hosts=known_hosts,
                         timeout=timeout)
        cases = _junit_cases(junit, host.name)
    except (XenforgeError, ET.ParseError) as exc:
        text = exc.render() if isinstance(exc, XenforgeError) else f"damaged JUnit XML: {exc}"
        ran = Outcome(failures=[Failure("pytest", f"{text}; see {log}")],
                      seconds=time.monotonic() - start)
        cases = []
    # what run_suites adds when pytest itself failed (no test ran, it did not finish) is
    # no testcase of its file: it becomes the host's "pytest" check
    extra_cases = [_case(host.name, "pytest", 0.0, f.message)
                   for f in ran.failures if f.test == "pytest"]
    outcome = Outcome(
        tests=1 + ran.tests + len(extra_cases),
        failures=[Failure(f"{host.name}::pytest" if f.test == "pytest"
                          else f"{host.name}.{f.test}", f.message) for f in ran.failures],
        skipped=ran.skipped, seconds=took + ran.seconds, junit=junit)
    return HostResult(host, outcome, [reach, *cases, *extra_cases], log, reachable=True)


def write_junit(results: Sequence[HostResult], dest: Path, seconds: float) -> Path:
    """One JUnit XML file: a ``<testsuite name=HOST>`` per host."""
    root = ET.Element("testsuites", name="xenforge fleet")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for r in results:
        counts = {
            "tests": len(r.cases),
            "failures": sum(c.find("failure") is not None for c in r.cases),
            "errors": sum(c.find("error") is not None for c in r.cases),
            "skipped": sum(c.find("skipped") is not None for c in r.cases),
        }
        suite = ET.SubElement(root, "testsuite", {
            "name": r.host.name, "hostname": r.host.address,
            **{k: str(v) for k, v in counts.items()}, "time": f"{r.outcome.seconds:.3f}"})
        suite.extend(r.cases)
        for k, v in counts.items():
            totals[k] += v
    root.attrib.update({k: str(v) for k, v in totals.items()}, time=f"{seconds:.3f}")
    ET.indent(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(dest)
    return dest


def _folders(hosts: Sequence[Host], logs: Path) -> list[Path]:
    """A log folder per host, named after it (made unique where names differ only in
    characters a file name does without)."""
    seen: set[str] = set()
    out = []
    for host in hosts:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", host.name).lstrip(".") or "host"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        out.append(logs / name)
    return out


def run_fleet(hosts: Sequence[Host], *, expect: dict[str, Any], junit: Path, logs: Path,
              builtin: Sequence[str], extra: Sequence[Path] = (),
              identity: Path | None = None, known_hosts: Path | None = None,
              jobs: int | None = None,
              on_done: Callable[[HostResult], None] | None = None) -> FleetResult:
    """Check every host, ``jobs`` at a time (default: up to :data:`DEFAULT_JOBS`), calling
    ``on_done`` as each finishes; write the merged JUnit XML to ``junit``."""
    for path in extra:  # before any host starts, not once per host
        if not path.exists():
            raise InputError(f"test suite not found: {path}", hint="check tests.suites")
    start = time.monotonic()
    folders = _folders(hosts, logs)
    results: dict[int, HostResult] = {}
    pool = ThreadPoolExecutor(max_workers=jobs or max(1, min(len(hosts), DEFAULT_JOBS)),
                              thread_name_prefix="xenforge-fleet")
    try:
        futures = {
            pool.submit(check_host, host, workdir=folder, expect=expect, builtin=builtin,
                        extra=extra, identity=identity, known_hosts=known_hosts): i
            for i, (host, folder) in enumerate(zip(hosts, folders, strict=True))
        }
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if on_done is not None:
                on_done(result)
    except BaseException:  # Ctrl-C, or a bug: stop every host's pytest, start no other
        runner.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    seconds = time.monotonic() - start
    ordered = [results[i] for i in range(len(hosts))]
    write_junit(ordered, junit, seconds)
    return FleetResult(ordered, junit, seconds)
