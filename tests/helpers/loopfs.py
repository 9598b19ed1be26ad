"""A small real ext4 filesystem on a loop device, for tests of a disk that fills up.

Needs root, ``mkfs.ext4`` and loop devices (:func:`unavailable` says why not). The image
is made with ``-m 0`` (no blocks reserved for root, who runs the tests: the disk is full
for root too) and is always unmounted and its loop device detached again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def unavailable() -> str | None:
    """Why no loop-mounted ext4 can be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount -o loop)"
    for tool in ("mkfs.ext4", "mount", "umount", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _detach(image: Path) -> None:
    """Detach every loop device still backed by ``image``."""
    listing = _run("losetup", "-j", str(image)).stdout
    for line in listing.splitlines():
        dev = line.split(":", 1)[0]
        if dev:
            _run("losetup", "-d", dev)


@contextlib.contextmanager
def loop_ext4(image: Path, mountpoint: Path, mib: int = 32) -> Iterator[Path]:
    """``mountpoint`` with a fresh ``mib`` MiB ext4 mounted on it (from the sparse file
    ``image``); unmounted, detached and the image removed when the block ends."""
    image.parent.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(mib << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,nodiscard",
                str(image))
    if made.returncode != 0:
        image.unlink()
        raise RuntimeError(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mountpoint))
    if mounted.returncode != 0:
        _detach(image)
        image.unlink()
        raise RuntimeError(f"mount -o loop failed: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        for _ in range(50):  # a process of the test may still close a file there
            if _run("umount", str(mountpoint)).returncode == 0 or \
                    not os.path.ismount(mountpoint):
                break
            time.sleep(0.1)
        else:
            _run("umount", "-l", str(mountpoint))
        _detach(image)
        image.unlink(missing_ok=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A ballast file in ``path`` that leaves about ``leave`` bytes free on its
    filesystem (for a test to delete when it frees the space); ``leave=0`` writes until
    the filesystem refuses a byte more."""
    ballast = path / "ballast"
    size = max(0, free_bytes(path) - leave) if leave else 1 << 40
    chunk = b"\xa5" * (1 << 20)
    with open(ballast, "wb", buffering=0) as f:
        try:
            while size > 0:
                n = min(size, len(chunk))
                f.write(chunk[:n])
                size -= n
            os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            for step in (4096, 1):  # the last blocks, then the last bytes of the last one
                with contextlib.suppress(OSError):
                    while f.write(b"\xa5" * step):
                        pass
    return ballast
