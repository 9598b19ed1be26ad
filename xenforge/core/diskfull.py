"""A write that found no room (ENOSPC, EDQUOT), told as what it is: which filesystem is
full, how much room it has, which of xenforge's dirs it holds - never as an internal
error or as a network fault."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TypeGuard

from xenforge.core.units import human_size

#: the errno values of a write that found no room: the disk, or the user's quota on it, full
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether ``exc`` is a write that found no room."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def mount_point(path: Path) -> Path:
    path = path.absolute()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a staging dir already removed)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def describe(dirs: list[Path], filename: str | None = None,
             root: Path | None = None) -> str | None:
    """The filesystem that ran out of room, for people: its mount point, its free space
    and which of ``dirs`` it holds (those below ``root``, the cache, named relative to it).
    ``filename``: the file a write failed on, when the error names one; else the
    filesystem of ``dirs`` with the least room is taken. None: none could be examined."""
    seen: dict[int, tuple[int, int, list[Path]]] = {}  # st_dev -> free, size, dirs on it
    named: int | None = None
    for i, path in enumerate(([Path(filename)] if filename else []) + dirs):
        probe = _existing(path)
        try:
            dev = probe.stat().st_dev
            st = os.statvfs(probe)
        except OSError:
            continue
        entry = seen.setdefault(dev, (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize,
                                      []))
        if i == 0 and filename:
            named = dev
        else:
            entry[2].append(path)
    if not seen:
        return None
    dev = named if named is not None else min(seen, key=lambda d: seen[d][0])
    free, size, on_it = seen[dev]
    inside = [p for p in on_it if root is not None and p.is_relative_to(root)]
    held = [str(p) for p in on_it if p not in inside]
    below = [f"{p.relative_to(root).as_posix()}/" for p in inside
             if root is not None and p != root]
    if inside and root is not None:
        held.insert(0, f"the cache {root}" + (f": {', '.join(below)}" if below else ""))
    mount = mount_point(_existing(Path(filename)) if named is not None and filename
                        else on_it[0])
    return f"{mount} has {human_size(free)} free of {human_size(size)}" + (
        f" (it holds {'; '.join(held)})" if held else "")


def message(exc: OSError, dirs: list[Path], root: Path | None = None) -> str:
    """``the disk is full (No space left on device: F): /mnt has 0 B free ...``."""
    filename = exc.filename if isinstance(exc.filename, str) else None
    where = f": {filename}" if filename else ""
    full = describe(dirs, filename, root)
    return f"the disk is full ({exc.strerror}{where})" + (f": {full}" if full else "")


HINT = ("free space there (e.g. `xenforge cache gc --max-size SIZE`, or --cache-dir on a "
        "larger disk) and run again")
