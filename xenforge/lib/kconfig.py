"""Kconfig fragments: parse, merge, apply to a ``.config``, verify what survived.

Generic over Kconfig projects (Linux, Xen): symbols carry the ``CONFIG_`` prefix in
``.config`` files and fragments. The flow a build stage follows::

    requested = merge([parse_fragment(p) for p in fragment_paths])
    apply_to_config(build / ".config", requested)        # like merge_config.sh -m
    # ... run `make olddefconfig` ...
    problems = verify(requested, read_config(build / ".config"))
    if problems:
        index = KconfigIndex.load(srctree, env={"SRCARCH": "x86"})
        raise KconfigDropped(problems, index, final)      # explains each dropped option

Kconfig silently drops (or changes) a requested option whose dependencies are unmet;
:mod:`xenforge.lib.kconfig_index` reads the Kconfig files to say which dependency it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xenforge.core.errors import InputError

PREFIX = "CONFIG_"

_NAME = r"[A-Za-z0-9_]+"
_SET_RE = re.compile(rf"^{PREFIX}({_NAME})=(.*)$")
_UNSET_RE = re.compile(rf"^#\s*{PREFIX}({_NAME}) is not set\s*$")
_BARE_RE = re.compile(r'^(y|m|n|-?[0-9]+|0[xX][0-9a-fA-F]+)$')
_STRING_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"$')


@dataclass(frozen=True)
class Setting:
    """One ``CONFIG_NAME=value`` (or ``# CONFIG_NAME is not set``) line of a fragment."""

    name: str  # without the prefix, e.g. "XEN"
    value: str  # "y" | "m" | "n" | a quoted string '"text"' | a number ("12", "0x1f")
    origin: str  # where it was asked for: a fragment's display name, or "xenforge"
    line: int = 0

    def render(self) -> str:
        if self.value == "n":
            return f"# {PREFIX}{self.name} is not set"
        return f"{PREFIX}{self.name}={self.value}"

    @property
    def where(self) -> str:
        return f"{self.origin}:{self.line}" if self.line else self.origin

    def request(self) -> str:
        """How the request reads in a message: ``CONFIG_X=y``, ``CONFIG_X=n``."""
        return f"{PREFIX}{self.name}={self.value}"


@dataclass(frozen=True)
class Override:
    """A later fragment asked for another value of an option an earlier one set."""

    old: Setting
    new: Setting

    def render(self) -> str:
        return (f"{self.new.where}: {self.new.request()} overrides "
                f"{self.old.request()} from {self.old.where}")


def quote(text: str) -> str:
    """A Kconfig string value, quoted and escaped as in ``.config``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(value: str) -> str:
    m = _STRING_RE.match(value)
    if not m:
        return value
    return re.sub(r"\\(.)", r"\1", m.group(1))


def display_path(path: Path) -> str:
    """A path as people want to read it: relative to the working directory when below it."""
    try:
        return os.path.relpath(path) if path.is_absolute() and Path.cwd() in path.parents \
            else str(path)
    except ValueError:
        return str(path)


def parse_text(text: str, origin: str, *, strict: bool = True) -> list[Setting]:
    """Parse fragment or ``.config`` text. Comments and blank lines are skipped.

    ``strict`` (fragments) rejects lines that are neither an assignment nor a comment,
    values that are not y/m/n, a number or a quoted string, and one option set to two
    values in the same file; ``.config`` files written by Kconfig are read leniently.
    """
    out: dict[str, Setting] = {}
    problems: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _UNSET_RE.match(line)
        if m:
            name, value = m.group(1), "n"
        elif line.startswith("#"):
            continue
        else:
            m = _SET_RE.match(line)
            if not m:
                if strict:
                    problems.append(f"{origin}:{n}: not a Kconfig setting: {raw!r} "
                                    f"(write {PREFIX}NAME=value or '# {PREFIX}NAME is not set')")
                continue
            name, value = m.group(1), m.group(2).strip()
            if not (_BARE_RE.match(value) or _STRING_RE.match(value)):
                if strict:
                    problems.append(f"{origin}:{n}: bad value {value!r} for {PREFIX}{name} "
                                    "(use y, m, n, a number or a \"quoted string\")")
                continue
        prev = out.get(name)
        if strict and prev is not None and prev.value != value:
            problems.append(f"{origin}:{n}: {PREFIX}{name}={value} contradicts line "
                            f"{prev.line} ({prev.request()}) of the same file")
            continue
        out[name] = Setting(name, value, origin, n)
    if problems:
        raise InputError("bad Kconfig fragment:\n  " + "\n  ".join(problems),
                         hint="fix the lines named above")
    return list(out.values())


def parse_fragment(path: Path, display: str | None = None) -> list[Setting]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read Kconfig fragment {path}: {exc.strerror}") from exc
    return parse_text(text, display or display_path(path))


def read_config(path: Path) -> dict[str, str]:
    """A ``.config`` as ``{name: value}``; options ``is not set`` read as ``"n"``."""
    return {s.name: s.value for s in parse_text(path.read_text(encoding="utf-8"),
                                                str(path), strict=False)}


def merge(fragments: Iterable[Sequence[Setting]]) -> tuple[dict[str, Setting], list[Override]]:
    """Merge fragments in order: a later value wins (as in merge_config.sh); the overrides
    are returned so that a stage can log them."""
    merged: dict[str, Setting] = {}
    overrides: list[Override] = []
    for frag in fragments:
        for s in frag:
            old = merged.get(s.name)
            if old is not None and old.value != s.value:
                overrides.append(Override(old, s))
            merged[s.name] = s
    return merged, overrides


def apply_to_config(config: Path, requested: Mapping[str, Setting]) -> None:
    """Write the requested values into ``config`` (replacing any line that sets the same
    option), like ``merge_config.sh -m``; run ``olddefconfig`` afterwards."""
    lines = config.read_text(encoding="utf-8").splitlines() if config.exists() else []
    kept = []
    for raw in lines:
        line = raw.strip()
        m = _SET_RE.match(line) or _UNSET_RE.match(line)
        if m and m.group(1) in requested:
            continue
        kept.append(raw)
    kept.append("# --- merged by xenforge ---")
    kept.extend(s.render() for s in requested.values())
    tmp = config.with_name(config.name + ".xenforge-tmp")
    tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    tmp.replace(config)


def _number(value: str) -> int | None:
    try:
        return int(value, 0)
    except ValueError:
        return None


def values_match(wanted: str, actual: str | None) -> bool:
    if wanted == "n":
        return actual in (None, "n")
    if actual is None:
        return False
    if _STRING_RE.match(wanted) or _STRING_RE.match(actual):
        return unquote(wanted) == unquote(actual)
    a, b = _number(wanted), _number(actual)
    if a is not None and b is not None:
        return a == b
    return wanted == actual


@dataclass(frozen=True)
class Mismatch:
    """A requested option that did not survive ``olddefconfig`` as asked."""

    setting: Setting
    actual: str | None  # None: absent from .config (invisible, or unknown to Kconfig)

    @property
    def dropped(self) -> bool:
        return self.actual in (None, "n")

    def summary(self) -> str:
        s = self.setting
        if self.dropped:
            return f"{s.where}: {s.request()} was dropped by Kconfig"
        return f"{s.where}: {s.request()} became {PREFIX}{s.name}={self.actual}"


def verify(requested: Mapping[str, Setting], final: Mapping[str, str]) -> list[Mismatch]:
    """Every requested option whose value in ``final`` is not what was asked for."""
    return [Mismatch(s, final.get(name)) for name, s in requested.items()
            if not values_match(s.value, final.get(name))]
