"""What a ``path`` source may be, checked when the recipe is read (``xenforge validate``),
so that hashing it for the node id and copying it into the cache can neither hang nor fail
halfway: a regular file or a folder of regular files, folders and symlinks that this user
can read, with UTF-8 names and paths that fit PATH_MAX - not the root of the filesystem,
not a pseudo-filesystem such as /proc or /sys (whose files never end or block when read),
never a device, FIFO or socket (a FIFO blocks whoever opens it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: filesystems that are the kernel's view of itself, not files (reading them blocks,
#: never ends or changes while read)
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "efivarfs",
    "binfmt_misc", "autofs", "rpc_pipefs", "nsfs", "selinuxfs"})
#: the longest path the system takes (bytes, with its NUL)
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
#: the most entries a source folder may hold (a Linux tree has about 90,000)
MAX_ENTRIES = 2_000_000


def _pseudo_devices() -> dict[int, str]:
    """st_dev -> filesystem type of every pseudo-filesystem mounted (from mountinfo)."""
    out: dict[int, str] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        fields, _, rest = line.partition(" - ")
        devices, types = fields.split()[2:3], rest.split()[:1]
        if not devices or not types:
            continue
        major, _, minor = devices[0].partition(":")
        fstype = types[0]
        if fstype in PSEUDO_FILESYSTEMS and major.isdigit() and minor.isdigit():
            out[os.makedev(int(major), int(minor))] = fstype
    return out


def _shown(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def source_problem(p: Path) -> tuple[str, str] | None:
    """What keeps ``p`` (an existing file or folder, absolute) from being a source:
    (message, hint), or None."""
    hint = "name a folder of your own source files (or a tarball)"
    if p == Path(p.anchor):
        return f"{p} is the root of the filesystem, not a source folder", hint
    pseudo = _pseudo_devices()
    try:
        st = os.stat(p)
    except OSError as exc:
        return f"{p} cannot be read: {exc.strerror}", hint
    if st.st_dev in pseudo:
        return f"{p} is on the kernel's {pseudo[st.st_dev]} filesystem, not a source", hint
    if stat.S_ISREG(st.st_mode):
        if not os.access(p, os.R_OK):
            return f"{p} cannot be read (permission denied)", "make it readable"
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{p} is a device, FIFO or socket, not a file or folder", hint
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return f"{p} cannot be read: {exc.strerror}", "make it readable"
    counted = [0]
    try:
        return _walk(fd, os.fsencode(p), pseudo, counted)
    finally:
        os.close(fd)


def _walk(fd: int, path: bytes, pseudo: dict[int, str], counted: list[int]
          ) -> tuple[str, str] | None:
    """The first problem below the open folder ``fd`` (at ``path``), depth first."""
    try:
        entries = sorted(os.scandir(fd), key=lambda e: e.name)
    except OSError as exc:
        return f"{_shown(path)} cannot be read: {exc.strerror}", "make it readable"
    for entry in entries:
        name = os.fsencode(entry.name)
        full = path + b"/" + name
        counted[0] += 1
        if counted[0] > MAX_ENTRIES:
            return (f"{_shown(path)} holds more than {MAX_ENTRIES} files",
                    "name the folder of the source itself")
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            return (f"{_shown(full)}: the file name is not UTF-8",
                    "rename it (the cache, the SBOM and the tools record names as UTF-8)")
        if len(full) >= PATH_MAX:
            return (f"{_shown(full[:80])}...: the path is too long ({len(full)} bytes, at "
                    f"most {PATH_MAX - 1})", "shorten the folder names below the source")
        try:
            st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            return f"{_shown(full)} cannot be read: {exc.strerror}", "make it readable"
        if stat.S_ISLNK(st.st_mode):
            continue  # kept as a link, never followed
        if stat.S_ISREG(st.st_mode):
            if not os.access(entry.name, os.R_OK, dir_fd=fd):
                return f"{_shown(full)} cannot be read (permission denied)", "make it readable"
            continue
        if not stat.S_ISDIR(st.st_mode):
            return (f"{_shown(full)} is a device, FIFO or socket (copying one never ends)",
                    "remove it from the source folder")
        if st.st_dev in pseudo:
            return (f"{_shown(full)} is the kernel's {pseudo[st.st_dev]} filesystem, not a "
                    "source", "unmount it, or name another folder")
        try:
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            return f"{_shown(full)} cannot be read: {exc.strerror}", "make it readable"
        try:
            problem = _walk(sub, full, pseudo, counted)
        finally:
            os.close(sub)
        if problem is not None:
            return problem
    return None
