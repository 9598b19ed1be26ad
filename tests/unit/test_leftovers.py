"""Finding what a build left below a directory (xenforge.leftovers), without root."""

from __future__ import annotations

import os
from pathlib import Path

from xenforge import leftovers


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
