"""Field types shared by recipes and spec files."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from xenforge.core.paths import path_kind, resolved
from xenforge.lib.archive import MIRROR_PATTERN
from xenforge.lib.xl import UNSAFE_CMDLINE_CHARS
from xenforge.limits import MAX_IMAGE_MIB, MIN_DISK_MIB
from xenforge.recipe.yamlload import Located


class Model(BaseModel):
    """Strict base: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)


def resolve_path(value: Any) -> Any:
    """A relative path is relative to the YAML file that wrote it."""
    if isinstance(value, Located) and value and not os.path.isabs(value):
        return resolved(value.file.parent / value)
    if isinstance(value, str):
        return Path(value)
    return value


def not_a_file(p: Path) -> tuple[str, str] | None:
    """What keeps ``p`` from being read as a regular file - (message, hint) - or None: it
    is missing (a dangling symlink, a symlink loop), a folder, a device, FIFO or socket
    (reading one never ends), or this user may not read it."""
    kind = path_kind(p)
    if kind is None:
        return f"no such file: {p}", "relative paths are relative to the file that names them"
    if kind != "file":
        return (f"{p} is a {'folder' if kind == 'dir' else 'special file'}, not a regular "
                "file", "name a regular file (a device, FIFO or folder is never read)")
    if not os.access(p, os.R_OK):
        return f"{p} cannot be read (permission denied)", "make it readable, or name another"
    return None


def _regular_file(p: Path) -> Path:
    wrong = not_a_file(p)
    if wrong is None:
        return p
    if wrong[0].startswith("no such file"):
        raise ValueError(wrong[0])  # (load.py gives its hint)
    raise PydanticCustomError("path_kind", "{message}", {"message": wrong[0], "hint": wrong[1]})


def _directory(p: Path) -> Path:
    kind = path_kind(p)
    if kind is None:
        raise ValueError(f"no such folder: {p}")
    if kind != "dir":
        raise PydanticCustomError("path_kind", "not a folder: {path} (a {kind})", {
            "path": str(p), "kind": "file" if kind == "file" else "device, FIFO or socket",
            "hint": "name a folder"})
    if not os.access(p, os.R_OK | os.X_OK):
        raise PydanticCustomError("path_kind", "{path} cannot be read (permission denied)",
                                  {"path": str(p), "hint": "make it readable, or name "
                                   "another"})
    return p


def _series_dir(p: Path) -> Path:
    if path_kind(p / "series") != "file":
        raise PydanticCustomError(
            "no_series", "patch folder {path} has no series file",
            {"path": str(p), "hint": "list its patches in order in a file named `series` "
             "in it, one per line"})
    return p


#: a regular file that must exist, relative to the file that names it
FilePath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_regular_file)]
#: a folder that must exist, relative to the file that names it
DirPath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_directory)]
#: a patch series: a folder with a ``series`` file (checked at validate, not by the tree
#: stage); the patches it lists are checked when the build is planned
SeriesDir = Annotated[DirPath, AfterValidator(_series_dir)]

#: names used as keys and references: lower case, digits, dot, dash, underscore
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)]
#: a systemd unit name without the ``.service`` suffix (``xendomains``, ``ssh``, ``getty@tty1``)
UnitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:_.@-]+$", max_length=128)]

_SIZE = re.compile(r"^([0-9]+)\s*(M|MiB|G|GiB)$")


def _size_mib(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        shown = repr(value) if len(value) < 40 else repr(value[:37] + "...")
        if not m:
            raise ValueError(f"{shown} is not a size; write it like 512M or 4G")
        if len(m.group(1)) > len(str(MAX_IMAGE_MIB)):  # (and Python's int() has a limit)
            raise ValueError(f"{shown} is larger than an image can be "
                             f"({MAX_IMAGE_MIB >> 20} TiB)")
        n = int(m.group(1))
        return n * 1024 if m.group(2).startswith("G") else n
    return value


def _size_range(value: int) -> int:
    if not MIN_DISK_MIB <= value <= MAX_IMAGE_MIB:
        raise PydanticCustomError(
            "size_range", "{value} MiB is no image size: from {low}M to {high}G",
            {"value": value, "low": MIN_DISK_MIB, "high": MAX_IMAGE_MIB >> 10,
             "hint": "write it like 512M or 4G"})
    return value


#: a size in MiB, written as 512M / 4G (or a plain number of MiB), at least MIN_DISK_MIB
#: (what a guest's filesystem needs more is a check of checks.py) and at most MAX_IMAGE_MIB
SizeMiB = Annotated[int, BeforeValidator(_size_mib), AfterValidator(_size_range),
                    WithJsonSchema({
                        "anyOf": [{"type": "integer", "minimum": MIN_DISK_MIB,
                                   "maximum": MAX_IMAGE_MIB},
                                  {"type": "string",
                                   "pattern": r"^\s*[0-9]+\s*(M|MiB|G|GiB)\s*$"}],
                        "description": "MiB, or a size such as 512M or 4G"})]


def fragment_ref(value: Any) -> Any:
    """A Kconfig fragment: a name from the line/spec (``dom0``) or a path (``x/y.config``)."""
    if isinstance(value, str) and ("/" in value or value.endswith(".config")):
        return resolve_path(value)
    return value


FragmentRef = Annotated[Path | str, BeforeValidator(fragment_ref)]


def _cmdline(value: Any) -> Any:
    if isinstance(value, str):
        bad = sorted({c for c in value if c in UNSAFE_CMDLINE_CHARS or not c.isprintable()})
        if bad:
            shown = " ".join("newline" if c == "\n" else repr(c) for c in bad)
            raise PydanticCustomError(
                "cmdline", "a command line may not contain {shown} (it is written into boot "
                "menus and xl configs)", {"shown": shown, "hint": "one line of words without "
                                          "quotes: e.g. console=hvc0 loglevel=4"})
    return value


#: a kernel or Xen command line: printable, no quotes, backslashes or $
CmdLine = Annotated[str, AfterValidator(_cmdline), StringConstraints(max_length=1024)]
#: a diskimage-builder element name (its folder): never an option (-o...) for its argv
ElementName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                               max_length=64)]
#: a Debian package name (policy 5.6.1): never two names, an option or a shell word
PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+$",
                                               max_length=128)]
#: a network bridge name (Linux: at most 15 characters)
BridgeName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_.-]{1,15}$")]
#: a host name (one DNS label or more, lower case)
HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
HOSTNAME_MAX = 63
HostName = Annotated[str, StringConstraints(pattern=HOSTNAME_PATTERN, max_length=HOSTNAME_MAX)]


def is_host_name(text: str) -> bool:
    """Whether ``text`` is a HostName (a guest's name is its host name unless it sets one)."""
    return len(text) <= HOSTNAME_MAX and re.fullmatch(HOSTNAME_PATTERN, text) is not None
_MAINTAINER = re.compile(r"^[^<>\n\"]+ <[^<>@\s]+@([^<>@\s]+\.[^<>@\s]+)>$")
#: mail domains lintian calls bogus (bogus-mail-host)
_BOGUS_HOSTS = ("localhost", "localdomain", "invalid", "local")


def _maintainer(value: Any) -> Any:
    if isinstance(value, str):
        m = _MAINTAINER.fullmatch(value)
        if not m:
            raise ValueError(f"{value!r} is not 'Name <address@domain>'")
        if any(part in _BOGUS_HOSTS for part in m.group(1).lower().split(".")):
            raise ValueError(f"{m.group(1)} is not a real mail domain (lintian: "
                             "bogus-mail-host); use your own domain")
    return value


#: a package maintainer, "Name <address@domain>" (lintian: a real domain, not localhost)
Maintainer = Annotated[str, AfterValidator(_maintainer)]


def _released(value: Any) -> Any:
    """A date (YAML gives datetime.date for 2024-05-01) or a timestamp -> epoch seconds."""
    if isinstance(value, datetime.datetime):
        return int(value.replace(tzinfo=value.tzinfo or datetime.UTC).timestamp())
    if isinstance(value, datetime.date):
        return int(datetime.datetime(value.year, value.month, value.day,
                                     tzinfo=datetime.UTC).timestamp())
    if isinstance(value, str):
        try:
            return _released(datetime.datetime.fromisoformat(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a date; write it like 2025-07-31") from None
    return value


#: when a pinned source was released: a date (2025-07-31) or an ISO timestamp, as epoch
#: seconds (UTC)
Released = Annotated[int, BeforeValidator(_released), WithJsonSchema({
    "type": "string", "format": "date", "description": "a date such as 2025-07-31"})]


def _mirror(value: Any) -> Any:
    if isinstance(value, str) and (len(value) > 512 or not re.fullmatch(MIRROR_PATTERN, value)):
        raise PydanticCustomError(
            "mirror_url", "{shown} is not a mirror URL", {
                "shown": repr(value) if len(value) < 60 else repr(value[:57] + "..."),
                "hint": "one URL such as http://mirror.example.org/debian (no spaces, quotes or "
                        "newlines: it is written into sources.list)"})
    return value


#: a Debian archive mirror: a URL of one word, no space, quote or newline (it goes into a
#: sources.list line and a debootstrap argv)
MirrorUrl = Annotated[str, AfterValidator(_mirror),
                      WithJsonSchema({"type": "string", "pattern": MIRROR_PATTERN})]
