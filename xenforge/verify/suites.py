"""Run the testinfra suites (``tests/infra``, plus a recipe's own) against a host over SSH,
write JUnit XML and a short human summary."""

from __future__ import annotations

import json
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xenforge.core import run as runner
from xenforge.core.data import data_dir
from xenforge.core.errors import InputError

#: the suites shipped with xenforge (a folder in a checkout, package data in a wheel)
INFRA_DIR = data_dir("infra")
SUITES = {"dom0": "test_dom0.py", "guests": "test_guests.py"}


@dataclass
class Failure:
    test: str
    message: str


@dataclass
class Outcome:
    tests: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    junit: Path | None = None

    @property
    def ok(self) -> bool:
        return self.tests > 0 and not self.failures

    @property
    def passed(self) -> int:
        """Checks that passed (a failure of the run itself, e.g. "no test ran", is not one
        of the checks)."""
        return max(0, self.tests - len(self.failures) - self.skipped)

    def summary(self) -> str:
        head = (
            f"{self.passed} passed, "
            f"{len(self.failures)} failed, {self.skipped} skipped in {self.seconds:.0f}s"
        )
        lines = [head] + [f"  FAILED {f.test}: {f.message}" for f in self.failures]
        if self.junit:
            lines.append(f"  JUnit XML: {self.junit}")
        return "\n".join(lines)


def parse_target(target: str) -> tuple[str, str, str, int | None]:
    """``ssh://user@host:port`` -> (scheme, user, host, port); raise InputError if malformed."""
    bad = InputError(f"--host {target!r} is not a host address",
                     hint="write it as ssh://root@HOST[:PORT] (or paramiko://...)")
    try:
        parts = urlsplit(target)
        port = parts.port  # raises ValueError when not a number in 0-65535
    except ValueError:
        raise bad from None
    if parts.scheme not in ("ssh", "paramiko", "local") or (
        parts.scheme != "local" and not parts.hostname
    ):
        raise bad
    # one host, spelled plainly: no list, no percent-escapes (a NUL), no path or query
    if any(c in target for c in ",% \t\n") or parts.path not in ("", "/") or parts.query:
        raise bad
    return parts.scheme, parts.username or "root", parts.hostname or "", port


def ssh_config(dest: Path, *, throwaway_host: bool, known_hosts: Path | None = None) -> Path:
    """An ssh config reusing one connection for all checks (FACTS.md: 6x faster).

    A real host is checked against ``known_hosts`` (default: the user's); with a file given,
    a host it does not know yet is trusted on first use (``accept-new``) and recorded there,
    a changed key still fails."""
    lines = [
        f"Include {Path.home() / '.ssh' / 'config'}",
        "Host *",
        "  ControlMaster auto",
        f"  ControlPath {dest.parent / 'cm-%C'}",
        "  ControlPersist 120",
        "  ConnectTimeout 20",
        "  ServerAliveInterval 15",
        "  BatchMode yes",
    ]
    if throwaway_host:  # a VM we just booted: its host key is new every build
        lines += [
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  LogLevel ERROR",
        ]
    elif known_hosts is not None:
        lines += [
            "  StrictHostKeyChecking accept-new",
            f"  UserKnownHostsFile {known_hosts}",
        ]
    dest.write_text("\n".join(lines) + "\n")
    return dest


def suite_files(builtin: Sequence[str], extra: Sequence[Path] = ()) -> list[Path]:
    """The testinfra files a run collects: the built-in suites asked for, then the recipe's."""
    unknown = [name for name in builtin if name not in SUITES]
    if unknown:
        raise InputError(f"unknown built-in suite {', '.join(unknown)}",
                         hint=f"the built-in suites: {', '.join(SUITES)}")
    return [INFRA_DIR / SUITES[name] for name in SUITES if name in builtin] + list(extra)


def run_suites(
    target: str,
    *,
    expect: dict[str, Any],
    junit: Path,
    log: Path,
    builtin: Sequence[str] = ("dom0", "guests"),
    extra: Sequence[Path] = (),
    identity: Path | None = None,
    throwaway_host: bool = False,
    known_hosts: Path | None = None,
    timeout: float = 3600,
) -> Outcome:
    scheme, user, _host, _port = parse_target(target)
    # the infra folder is always collected, so that its conftest.py (the --xenforge-expect
    # option and fixtures) is loaded even for a recipe's own suites alone; the built-in suites
    # not asked for are ignored
    suites = [INFRA_DIR]
    skip = [f"--ignore={INFRA_DIR / f}" for name, f in SUITES.items() if name not in builtin]
    for path in extra:
        if not path.exists():
            raise InputError(f"test suite not found: {path}", hint="check tests.suites")
        suites.append(path)
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)  # an earlier run's results are never read back as this one's
    with tempfile.TemporaryDirectory(prefix="xenforge-verify-") as tmp:
        tmpdir = Path(tmp)
        expect_file = tmpdir / "expect.json"
        expect_file.write_text(json.dumps(expect, indent=2))
        argv: list[str | Path] = [
            sys.executable,
            "-m",
            "pytest",
            *suites,
            *skip,
            f"--hosts={target}",
            f"--xenforge-expect={expect_file}",
            f"--junitxml={junit}",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            INFRA_DIR,
            "-c",
            "/dev/null",
            "-o",
            "junit_family=xunit2",
            "-v",  # the log's last line names the check running now (`still` lines show it)
            "-ra",
        ]
        if scheme == "ssh":
            argv.append(
                "--ssh-config="
                + str(ssh_config(tmpdir / "ssh_config", throwaway_host=throwaway_host,
                                 known_hosts=known_hosts))
            )
        if identity is not None and scheme in ("ssh", "paramiko"):
            argv.append(f"--ssh-identity-file={identity}")
        if user != "root" and scheme != "local":
            argv.append("--sudo")
        res = runner.run(argv, log=log, check=False, timeout=timeout, inherit_env=True)
        if scheme == "ssh":  # close the shared connection
            runner.run(
                ["ssh", "-F", tmpdir / "ssh_config", "-O", "exit", "dummy"], check=False, log=log
            )
    outcome = parse_junit(junit)
    outcome.seconds = res.duration
    if outcome.tests == 0:
        outcome.failures.append(
            Failure("pytest", f"no test ran (exit {res.returncode}); see {log}")
        )
    elif res.returncode not in (0, 1):  # 1: some checks failed, recorded in the JUnit XML
        why = "timed out" if res.returncode < 0 else f"exit {res.returncode}"
        outcome.failures.append(
            Failure("pytest", f"the test run did not finish ({why}); see {log}")
        )
    return outcome


def parse_junit(path: Path) -> Outcome:
    out = Outcome(junit=path)
    if not path.is_file():
        return out
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        out.tests += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                out.failures.append(Failure(name, msg[0] if msg else kind))
                break
        else:
            if case.find("skipped") is not None:
                out.skipped += 1
    return out
