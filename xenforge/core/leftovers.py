"""Find and release what a build leaves on the host below a directory: processes chrooted
into it, mounts under it, loop devices backed by files in it.

Image builds (diskimage-builder) mount /proc, /dev, /sys and caches into a chroot below the
stage's work dir and attach the root filesystem image to a loop device. :func:`release` undoes
all of that whatever state the build was stopped in. It uses system calls only (``umount2``,
``LOOP_CLR_FD``, ``kill``), never subprocesses, so it also works after an interrupt, when
:mod:`xenforge.core.run` refuses to start new commands.

Call it (or the :func:`guard` context manager) around anything that mounts below a directory,
and before deleting such a directory: ``shutil.rmtree`` follows bind mounts and would delete
the host's ``/dev`` entries through a leftover ``<chroot>/dev`` bind mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xenforge.core.errors import XenforgeError

LOOP_CLR_FD = 0x4C01
MNT_DETACH = 2


@dataclass
class Released:
    processes: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.mounts or self.loops)

    def summary(self) -> str:
        parts = []
        if self.processes:
            parts.append(f"killed {len(self.processes)} chroot process(es)")
        if self.mounts:
            parts.append(f"unmounted {len(self.mounts)} mount(s)")
        if self.loops:
            parts.append(f"detached {', '.join(self.loops)}")
        if self.errors:
            parts.append("errors: " + "; ".join(self.errors))
        return ", ".join(parts) or "nothing left over"


def _unescape(path: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \ooo."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1:i + 4].isdigit() and len(path[i + 1:i + 4]) == 3:
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def _under(path: str, root: str) -> bool:
    base = root.rstrip("/")
    return path == base or path.startswith(base + "/")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    base = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                mp = _unescape(fields[4])
                if _under(mp, base):
                    found.append(mp)
    # deepest first; a path mounted twice appears twice (both must go)
    return sorted(found, key=lambda m: m.count("/"), reverse=True)


def loops_backed_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies at or below ``root``."""
    base = os.path.realpath(root)
    found = []
    for dev in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        backing = backing.removesuffix(" (deleted)")
        if _under(backing, base):
            found.append(f"/dev/{dev.name}")
    return found


def processes_rooted_under(root: Path) -> list[int]:
    """Processes whose root directory (chroot) lies at or below ``root``."""
    base = os.path.realpath(root)
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            proc_root = os.readlink(f"/proc/{entry.name}/root")
        except OSError:
            continue
        if _under(proc_root.removesuffix(" (deleted)"), base):
            found.append(int(entry.name))
    return found


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _umount(path: str, flags: int = 0) -> int:
    """0 on success, else the errno."""
    rc = libc().umount2(os.fsencode(path), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def _detach_loop(dev: str) -> int:
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno or errno.EIO
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)  # busy: the kernel frees it when its last user goes
    except OSError as exc:
        return 0 if exc.errno == errno.ENXIO else (exc.errno or errno.EIO)
    finally:
        os.close(fd)
    return 0


def release(root: Path, *, grace: float = 5.0, settle: float = 10.0) -> Released:
    """Kill processes chrooted below ``root``, unmount everything below it, detach loop
    devices backed by files below it. Safe to call when nothing is left (it is a no-op)."""
    done = Released()
    if not root.exists():
        return done
    pids = processes_rooted_under(root)
    done.processes = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
        if not pids:
            break
    for _ in range(3):  # nested/stacked mounts may need more than one pass
        mounts = mounts_under(root)
        if not mounts:
            break
        for mp in mounts:
            err = _umount(mp)
            if err in (errno.EBUSY,):
                err = _umount(mp, MNT_DETACH)
            if err == 0:
                done.mounts.append(mp)
            elif err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: already gone
                done.errors.append(f"umount {mp}: {os.strerror(err)}")
    for dev in loops_backed_under(root):
        err = _detach_loop(dev)
        if err == 0:
            done.loops.append(dev)
        else:
            done.errors.append(f"detach {dev}: {os.strerror(err)}")
    deadline = time.monotonic() + settle  # lazily unmounted filesystems let go of their loops
    while loops_backed_under(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    for dev in loops_backed_under(root):
        done.errors.append(f"{dev} is still attached (busy)")
    return done


def remaining(root: Path) -> Released:
    """What is still left below ``root`` (for checks and tests), without touching it."""
    return Released(processes=processes_rooted_under(root), mounts=mounts_under(root),
                    loops=loops_backed_under(root))


@contextlib.contextmanager
def guard(root: Path) -> Iterator[None]:
    """Release everything below ``root`` when the block ends, however it ends."""
    try:
        yield
    finally:
        release(root)


def remove_tree(root: Path) -> None:
    """Delete ``root`` safely: release what a killed build left below it first, refuse while
    anything is still mounted there, and never descend into another filesystem (a bind mount
    that appeared meanwhile), so the host's ``/dev`` or a shared cache is never deleted."""
    if not root.exists() and not root.is_symlink():
        return
    left = release(root)
    mounts = mounts_under(root)
    if mounts:
        raise XenforgeError(
            f"cannot delete {root}: still mounted below it: {', '.join(mounts)}",
            hint="unmount them (umount -R), then run the command again"
            + (f" ({'; '.join(left.errors)})" if left.errors else ""))
    _remove_one_fs(root, os.lstat(root).st_dev)


def _remove_one_fs(path: Path, dev: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_dev != dev:
        raise XenforgeError(f"cannot delete {path}: another filesystem is mounted there",
                            hint=f"unmount it (umount -R {path}), then run the command again")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            _remove_one_fs(Path(entry.path), dev)
        os.rmdir(path)
