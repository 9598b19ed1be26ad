"""The CPU time a node's commands used, counted by the kernel in a control group of the node's
own (as Yocto's buildstats record each task's CPU time).

A command's own rusage cannot say it: bubblewrap's outer process exits without reaping the
sandbox's init, so what ran inside never reaches xenforge's children's rusage. A cgroup
counts every process started in it, in whatever namespace, and the runner starts each command
of an accounted node inside the node's group (:func:`xenforge.core.run.run`).

cgroup v1's ``cpuacct`` controller (``cpuacct.usage``, nanoseconds) or cgroup v2's
``cpu.stat`` (``usage_usec``) - whichever this host mounts - below the cgroup xenforge runs
in. Without either (not root, no cgroup filesystem) a node simply has no CPU figure.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger("xenforge.cpuacct")
_serial = itertools.count()
_NAME = re.compile(r"xenforge-(\d+)-")
#: how long a node's group waits for its last processes to be reaped before it stays
REAP_WAIT = 0.5


@dataclass(frozen=True)
class Group:
    """One node's control group: where to put a command, how much CPU it has used."""

    path: Path
    v1: bool  # cpuacct.usage (ns) rather than cpu.stat's usage_usec

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def seconds(self) -> float | None:
        try:
            if self.v1:
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return None


def _hierarchy() -> tuple[Path, bool] | None:
    """Where this process's cgroup is in the hierarchy that counts CPU, and whether it is
    cgroup v1's cpuacct (else v2), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in mounts:
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup" and "cpuacct" in fields[3].split(","):
            v1 = Path(fields[1])
        elif fields[2] == "cgroup2" and v2 is None:
            v2 = Path(fields[1])
    for line in own:  # "4:cpu,cpuacct:/user.slice" (v1), "0::/user.slice/..." (v2)
        _, controllers, rel = line.split(":", 2)
        if v1 is not None and "cpuacct" in controllers.split(","):
            return v1 / rel.lstrip("/"), True
    for line in own:
        _, controllers, rel = line.split(":", 2)
        if v2 is not None and controllers == "" and line.startswith("0:"):
            return v2 / rel.lstrip("/"), False
    return None


@contextlib.contextmanager
def group(name: str) -> Iterator[Group | None]:
    """A new control group for ``name``'s commands for the block (None where the host has
    none to offer); removed afterwards (left behind, empty and harmless, if a process of it
    still runs)."""
    where = _hierarchy()
    path = None
    if where is not None:
        _sweep(where[0])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
        path = where[0] / f"xenforge-{os.getpid()}-{next(_serial)}-{safe}"
        try:
            path.mkdir()
        except OSError as exc:
            _log.debug("no cgroup for %s (%s): its CPU time is not counted", name, exc)
            path = None
    if path is None or where is None:
        yield None
        return
    try:
        yield Group(path, where[1])
    finally:
        deadline = time.monotonic() + REAP_WAIT  # an orphan its init has not reaped yet
        while True:
            try:
                path.rmdir()
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    _log.debug("cgroup %s stays (%s)", path, exc)
                    break
                time.sleep(0.02)


def _sweep(parent: Path) -> None:
    """Remove the groups a build that is gone (killed) left behind."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        m = _NAME.match(entry.name)
        if m and entry.is_dir() and not Path(f"/proc/{m.group(1)}").exists():
            with contextlib.suppress(OSError):  # still has a process: next time
                os.rmdir(entry.path)
