"""Quilt-format patch series: read ``series``, check it, apply it all or nothing.

A series folder holds a ``series`` file and the patches it names. Each line of ``series`` is
``NAME [-pN]`` (N defaults to 1); ``#`` starts a comment; blank lines are ignored. Patches
are applied in order with ``patch --batch --forward``, each after a ``--dry-run``; when one
does not apply, the ones already applied are reversed, so the tree is left as it was.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenforge.core import run as runner
from xenforge.core.errors import Problem, ValidationFailed, XenforgeError
from xenforge.core.hashing import sha256_file
from xenforge.core.paths import path_kind, resolved

SERIES = "series"
#: -pN strips fewer than this many leading path parts (a 5,000-digit N is no level)
MAX_STRIP = 100
_STRIP = re.compile(rf"^-p([0-9]{{1,{len(str(MAX_STRIP - 1))}}})$")


@dataclass(frozen=True)
class SeriesEntry:
    name: str  # as written in series, relative to the series folder
    path: Path
    strip: int
    line: int  # line number in series


class PatchFailed(XenforgeError):
    """A patch of a series does not apply; names the patch, the files and the hunks."""

    def __init__(self, entry: SeriesEntry, series: Path, failures: list[str], source: str,
                 output: list[str]) -> None:
        what = "\n".join(f"    {f}" for f in failures) if failures else \
            "\n".join(f"    | {o}" for o in output[-10:])
        against = source or "the unpacked source"
        super().__init__(
            f"patch {entry.path} does not apply (series line {entry.line}):\n{what}",
            hint=f"refresh the patch against {against} (e.g. `quilt refresh`), fix its -p "
                 f"level, or remove it from {series}",
        )
        self.entry = entry
        self.failures = failures


def read_series(patches_dir: Path) -> list[SeriesEntry]:
    """Parse ``patches_dir/series``; every problem (missing patch, bad option, duplicate) is
    reported at once, with the series file and line."""
    series = patches_dir / SERIES
    if not series.is_file():
        raise ValidationFailed([Problem(patches_dir, None, "", "patch folder has no series file",
                                        "list the patches in order in a file named `series`, "
                                        "one per line")])
    entries: list[SeriesEntry] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    root = resolved(patches_dir)
    data = series.read_bytes()
    try:
        lines = data.decode("utf-8").split("\n")  # lines as quilt and editors count them
    except UnicodeDecodeError as exc:
        raise ValidationFailed([Problem(series, data.count(b"\n", 0, exc.start) + 1, "",
                                        f"not UTF-8 text (byte {data[exc.start]:#04x})",
                                        "save the series file as UTF-8")]) from None
    for n, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not text:
            continue
        name, *opts = text.split()
        strip = 1
        for opt in opts:
            m = _STRIP.match(opt)
            if m:
                strip = int(m.group(1))
            else:
                shown = opt if len(opt) <= 20 else opt[:17] + "..."
                problems.append(Problem(series, n, "", f"unknown option {shown!r} for {name}",
                                        f"only -pN (strip N < {MAX_STRIP} leading path parts) "
                                        "is supported"))
        if "\0" in name:
            problems.append(Problem(series, n, "", f"patch name {name!r} holds a NUL byte",
                                    "name patches relative to the series folder"))
            continue
        path = (patches_dir / name)
        if os.path.isabs(name) or not resolved(path).is_relative_to(root):
            problems.append(Problem(series, n, "", f"patch {name!r} is outside {patches_dir}",
                                    "name patches relative to the series folder"))
            continue
        if path_kind(path) != "file":
            problems.append(Problem(series, n, "", f"patch {name} does not exist "
                                    f"(looked for {path})",
                                    "add the file or remove the line from series"))
            continue
        if name in seen:
            problems.append(Problem(series, n, "", f"patch {name} is listed twice "
                                    f"(first on line {seen[name]})", "remove one of the lines"))
            continue
        seen[name] = n
        entries.append(SeriesEntry(name=name, path=path, strip=strip, line=n))
    if problems:
        raise ValidationFailed(problems)
    return entries


def series_files(patches_dir: Path) -> list[Path]:
    """The ``series`` file and the patches it lists, in order (what a tree depends on)."""
    return [patches_dir / SERIES, *(e.path for e in read_series(patches_dir))]


def unlisted_patches(patches_dir: Path) -> list[str]:
    """``*.patch``/``*.diff`` files in the folder that ``series`` does not name."""
    listed = {e.name for e in read_series(patches_dir)}
    found = [p.relative_to(patches_dir).as_posix() for p in patches_dir.rglob("*")
             if p.suffix in (".patch", ".diff") and p.is_file()]
    return sorted(f for f in found if f not in listed)


def apply_series(tree: Path, patches_dir: Path, *, log: Path, source: str = "",
                 fuzz: int = 0) -> list[dict[str, Any]]:
    """Apply the series to ``tree``, all or nothing; return [{name, strip, sha256}] applied.

    Raises PatchFailed (the tree is restored first) or ValidationFailed (a bad series).
    """
    entries = read_series(patches_dir)
    applied: list[SeriesEntry] = []
    for entry in entries:
        ok, output = _patch(tree, entry, log, fuzz=fuzz, dry_run=True)
        if ok:
            ok, output = _patch(tree, entry, log, fuzz=fuzz, dry_run=False)
        if not ok:
            _reverse(tree, applied, log)
            raise PatchFailed(entry, patches_dir / SERIES, parse_failures(output), source,
                              output)
        applied.append(entry)
    return [{"name": e.name, "strip": e.strip, "sha256": sha256_file(e.path)} for e in applied]


def _patch(tree: Path, entry: SeriesEntry, log: Path, *, fuzz: int, dry_run: bool,
           reverse: bool = False) -> tuple[bool, list[str]]:
    argv: list[str | Path] = ["patch", "--batch", "--no-backup-if-mismatch", f"--fuzz={fuzz}",
            f"-p{entry.strip}", "-d", tree, "-i", entry.path]
    argv += ["--reverse"] if reverse else ["--forward"]
    argv += ["--dry-run"] if dry_run else ["--reject-file=-"]
    # run through a private log so that stdout and stderr come back merged and in order
    fd, name = tempfile.mkstemp(prefix="xenforge-patch-", suffix=".log")
    os.close(fd)
    own = Path(name)
    try:
        res = runner.run(argv, log=own, check=False)
        text = own.read_text(encoding="utf-8", errors="replace")
    finally:
        own.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(text)
    output = [line for line in text.splitlines()
              if not line.startswith(("$ ", "[xenforge] ")) and line.strip()]
    return res.returncode == 0, output


def _reverse(tree: Path, applied: list[SeriesEntry], log: Path) -> None:
    for entry in reversed(applied):
        ok, output = _patch(tree, entry, log, fuzz=0, dry_run=False, reverse=True)
        if not ok:
            raise XenforgeError(
                f"patch {entry.path} could not be reversed after a later patch failed; "
                f"{tree} is now partly patched",
                hint=f"unpack the source again; patch said: {' / '.join(output[-3:])}")


_HUNK = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_FILE = re.compile(r"^(?:checking|patching) file (.+)$")


def parse_failures(output: list[str]) -> list[str]:
    """Turn GNU patch's output into lines like ``src/x.c: hunk #2 FAILED at 120``."""
    failures: list[str] = []
    current = "?"
    missing = False
    for line in output:
        m = _FILE.match(line)
        if m:
            current = m.group(1).strip().strip("'")
            continue
        m = _HUNK.match(line)
        if m:
            failures.append(f"{current}: hunk #{m.group(1)} FAILED at line {m.group(2)}")
        elif line.startswith("Reversed (or previously applied) patch detected"):
            failures.append(f"{current}: already applied (or reversed)")
        elif line.startswith("can't find file to patch"):
            missing = True
        elif missing and line.startswith(("|+++ ", "|--- ")):
            target = line[5:].split("\t")[0].strip()
            if target != "/dev/null":
                failures.append(f"{target}: no such file in the tree (wrong -p level?)")
                missing = False
        elif line.startswith("patch: **** "):
            failures.append(line.removeprefix("patch: **** "))
    return failures
