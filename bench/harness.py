"""What every benchmark shares: the run's settings, running xenforge (wall and CPU time of
each command), medians, and the result a benchmark hands to the report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
XENFORGE = REPO / ".venv" / "bin" / "xenforge"
#: the data folders a recipe names by relative paths (a copy keeps them side by side)
DATA = ("recipes", "hypervisor", "kernel_patches")


def shipped(settings: Settings, outcome: Outcome, why: str) -> bool:
    """The recipe is one of recipes/ (whose data folders a benchmark copies and edits);
    else the outcome notes ``why`` it was not measured."""
    if settings.recipe.is_relative_to(REPO / "recipes"):
        return True
    outcome.notes.append(f"{why}: give a recipe of recipes/")
    return False


def copy_data(dest: Path) -> Path:
    """A copy of the checkout's data folders under ``dest``, to edit; returns ``dest``."""
    import shutil

    for folder in DATA:
        shutil.copytree(REPO / folder, dest / folder, symlinks=True)
    return dest


@dataclass
class Settings:
    """One run of the harness: which recipe, which cache, where scratch files go."""

    recipe: Path
    cache: Path
    work: Path  # scratch: exports, recipe copies, profiles (removed at the end)
    out: Path  # the report, its JSON and pictures
    runs: int = 5  # repetitions of the short measurements (medians)
    quick: bool = False
    command: str = "bench/run"  # how the harness was started, for the report


@dataclass
class Timed:
    """One command: exit code, wall and CPU seconds (user + system of it and its children),
    stdout, and the JSON objects it printed one per line (``--progress json``)."""

    argv: list[str]
    rc: int
    wall: float
    cpu: float
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def nodes(self, status: str) -> list[str]:
        """The nodes the command's build reported with this status (built, failed)."""
        return [str(e["node"]) for e in self.events
                if e.get("event") == "finished" and e.get("status") == status]

    def check(self) -> Timed:
        if self.rc != 0:
            raise RuntimeError(f"{' '.join(self.argv)} failed (exit {self.rc}):\n"
                               f"{self.stderr[-2000:]}{self.stdout[-2000:]}")
        return self


def timed(argv: Sequence[str | os.PathLike[str]], cwd: Path | None = None,
          env: dict[str, str] | None = None) -> Timed:
    """Run ``argv`` to the end; its CPU time is the change in this process's children's
    rusage (the harness runs one command at a time)."""
    args = [os.fspath(a) for a in argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, **env} if env else None)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(args, proc.returncode, wall, cpu, proc.stdout, proc.stderr)


def xenforge(settings: Settings, *args: str | os.PathLike[str], cache: Path | None = None,
             env: dict[str, str] | None = None) -> Timed:
    """``xenforge --cache-dir CACHE ARGS...`` (the settings' cache unless ``cache``), timed,
    with ``env`` added to the environment."""
    return timed([XENFORGE, "--cache-dir", cache or settings.cache, *args], env=env)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def clock(seconds: float) -> str:
    """``12.3 s`` below a minute, ``m:ss`` above."""
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


@dataclass
class Target:
    """A figure the issue sets a target for: met or not, and by how much."""

    what: str
    value: float
    limit: float
    unit: str = "s"

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def render(self) -> str:
        mark = "met" if self.met else "MISSED"
        return (f"{self.what}: {self.value:.2f} {self.unit} against <= {self.limit:g} "
                f"{self.unit} ({mark}, ratio {self.value / self.limit:.2f})")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


@dataclass
class Outcome:
    """What one benchmark found: tables for people, figures for the JSON, targets."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def machine() -> dict[str, Any]:
    """The machine the figures were measured on."""
    load = os.getloadavg()
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:")), "0")
    model = next((ln.split(":", 1)[1].strip() for ln in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_at_start": [round(x, 2) for x in load],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
