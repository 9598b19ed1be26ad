"""Finding what a build left below a directory (xenforge.leftovers), and deleting such a
directory safely (the mount tests need root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from xenforge.cache import Cache
from xenforge.core import leftovers
from xenforge.core.errors import XenforgeError


def test_unescape_mountinfo_paths() -> None:
    assert leftovers._unescape(r"/tmp/a\040b") == "/tmp/a b"
    assert leftovers._unescape(r"/x\134y") == "/x\\y"
    assert leftovers._unescape("/plain") == "/plain"
    assert leftovers._unescape("/trailing\\") == "/trailing\\"


def test_under_is_path_aware() -> None:
    assert leftovers._under("/w/dib/mnt", "/w/dib")
    assert leftovers._under("/w/dib", "/w/dib/")
    assert not leftovers._under("/w/dib2/mnt", "/w/dib")


def test_root_mount_is_found() -> None:
    assert "/" in leftovers.mounts_under(Path("/"))


def test_nothing_left_in_a_fresh_dir(tmp_path: Path) -> None:
    left = leftovers.remaining(tmp_path)
    assert not left
    assert left.summary() == "nothing left over"
    assert not leftovers.release(tmp_path)
    assert not leftovers.release(tmp_path / "missing")


def test_own_process_is_never_a_chroot_process(tmp_path: Path) -> None:
    assert os.getpid() not in leftovers.processes_rooted_under(Path("/"))


def _needs_mounts() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount (mount(8))")


def test_a_killed_builds_work_dir_is_deleted_without_touching_its_bind_mounts(
        tmp_path: Path) -> None:
    """A SIGKILLed image build leaves <work>/mnt/dev bind-mounted to the host's /dev;
    deleting its work dir must unmount first, never delete through the mount."""
    _needs_mounts()
    host_dir = tmp_path / "host-dev"
    host_dir.mkdir()
    (host_dir / "precious").write_text("host file")
    cache = Cache(tmp_path / "cache")
    work = cache.work_dir / "abc"
    (work / "mnt" / "dev").mkdir(parents=True)
    (work / "scratch.txt").write_text("build output")
    subprocess.run(["mount", "--bind", str(host_dir), str(work / "mnt" / "dev")], check=True)
    try:
        fresh = cache.work("abc")
        assert fresh == work and list(fresh.iterdir()) == []
        assert (host_dir / "precious").read_text() == "host file"
        assert not leftovers.mounts_under(work)
    finally:
        subprocess.run(["umount", "-R", str(work / "mnt" / "dev")], capture_output=True)


def test_remove_tree_never_crosses_into_another_filesystem(tmp_path: Path) -> None:
    _needs_mounts()
    other = tmp_path / "tree" / "sub" / "mounted"
    other.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    try:
        (other / "keep").write_text("on another filesystem")
        with pytest.raises(XenforgeError, match=r"another filesystem is mounted there"):
            leftovers._remove_one_fs(tmp_path / "tree", os.lstat(tmp_path / "tree").st_dev)
        assert (other / "keep").read_text() == "on another filesystem"
    finally:
        subprocess.run(["umount", str(other)], check=True)
    leftovers.remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
