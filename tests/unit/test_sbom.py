"""The SBOM reads a root filesystem's packages once per content: a real ext4 image (made
with mkfs.ext4 -d, read with debugfs) in a real cache object; what was read is kept by the
file's recorded sha256, a second export does not read the image again, and other bytes
are read afresh."""

from __future__ import annotations

import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest

from xenforge.build.executor import NodeResult
from xenforge.cache import Cache
from xenforge.export.sbom import Facts, package_records

pytestmark = pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                                reason="mkfs.ext4 or debugfs (e2fsprogs) is missing")

STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 13.8

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (2.1-3)
Version: 2.1-3+b1
"""


def _rootfs_object(cache: Cache, node_id: str, tmp: Path, version: str) -> NodeResult:
    tree = tmp / f"tree-{node_id[:4]}"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(STATUS.replace("2.1-3+b1", version))
    doc = tree / "usr/share/doc/libfoo1"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: GPL-2+\n\nFiles: x\nLicense: Expat\n")
    staging = tmp / f"staging-{node_id[:4]}"
    (staging / "out").mkdir(parents=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, staging / "out" / "root.ext4", "4M"],
                   check=True)
    cache.commit(node_id, staging, {"node": "rootfs:g"})
    return NodeResult("rootfs:g", node_id, "cached", out=cache.out(node_id))


def test_a_root_filesystems_packages_are_read_once_per_content(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    res = _rootfs_object(cache, "a" * 64, tmp_path, "2.1-3+b1")
    image = res.out / "root.ext4" if res.out else Path()
    first = Facts(cache).read(res, image, "dpkg", partial(package_records, image))
    assert [(p["name"], p["version"], p["source"], p["licenses"]) for p in first] == [
        ("base-files", "13.8", "base-files", []),
        ("libfoo1", "2.1-3+b1", "foo", ["GPL-2+", "Expat"])]
    memo = list((cache.state.root / "sbom").iterdir())
    assert [m.name for m in memo] == [f"{Facts(cache).sha256(res, image)}.dpkg.json"]

    def unread() -> list[object]:
        raise AssertionError("the image was read again")

    assert Facts(cache).read(res, image, "dpkg", unread) == first  # a later export

    other = _rootfs_object(cache, "b" * 64, tmp_path, "2.1-4")  # other bytes: read
    other_image = other.out / "root.ext4" if other.out else Path()
    again = Facts(cache).read(other, other_image, "dpkg", partial(package_records, other_image))
    assert [p["version"] for p in again] == ["13.8", "2.1-4"]
    assert len(list((cache.state.root / "sbom").iterdir())) == 2


def test_without_a_cache_nothing_is_remembered(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> list[int]:
        calls.append(1)
        return [1]

    facts = Facts(None)
    path = tmp_path / "f"
    path.write_text("x")
    res = NodeResult("n", "c" * 64, "built", out=tmp_path)
    for _ in range(2):
        assert facts.read(res, path, "k", compute) == [1]
    assert calls == [1, 1]
