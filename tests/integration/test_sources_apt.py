"""apt: and deb: sources against Debian's archive (the only network these tests use).

Uses GNU hello, a small package: ``hello=2.10-3`` (bookworm). Needs apt with a deb-src entry
for bookworm (ci/setup-host.sh adds it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from xenforge.core import run as runner
from xenforge.core.errors import SourceError
from xenforge.core.hashing import sha256_file
from xenforge.lib.deb822 import checksums_sha256, parse_deb822
from xenforge.sources.fetch import fetch, primary_archive, unpack
from xenforge.sources.specs import AptSource, DebSource

pytestmark = pytest.mark.slow

HELLO = "hello=2.10-3"
COPYRIGHT = "usr/share/doc/hello/copyright"


def _showsrc() -> dict[str, str]:
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not installed")
    res = runner.run(["apt-cache", "showsrc", "hello"], capture=True, check=False)
    for stanza in parse_deb822(res.stdout):
        if stanza.get("Version") == "2.10-3":
            return stanza
    pytest.skip("apt knows no source package hello 2.10-3 (no bookworm deb-src entry?)")


@pytest.fixture
def d(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(root=tmp_path, downloads=tmp_path / "downloads")


def _blobs(downloads: Path) -> list[Path]:
    root = downloads / "sha256"
    return sorted(root.iterdir()) if root.exists() else []


def test_apt_source_package_is_fetched_and_verified(d: SimpleNamespace) -> None:
    index = checksums_sha256(_showsrc())  # what apt's signed index says, independently
    log = d.root / "first.log"
    info = fetch(AptSource(apt=HELLO), d.root / "a", downloads=d.downloads, log=log)
    assert info["kind"] == "apt" and info["package"] == "hello"
    assert info["dsc"] == "hello_2.10-3.dsc"
    assert info["primary"] == "hello_2.10.orig.tar.gz"
    names = {f["name"] for f in info["files"]}
    assert names == set(index)  # the .dsc and every file it lists
    for f in info["files"]:
        assert sha256_file(d.root / "a" / f["name"]) == f["sha256"] == index[f["name"]][0]
    assert "apt-get" in log.read_text()

    tree = d.root / "tree"
    unpack(primary_archive(d.root / "a"), tree, log=log)
    assert (tree / "src" / "hello.c").is_file()

    # the second fetch is answered from the store: apt is not even asked
    log2 = d.root / "second.log"
    again = fetch(AptSource(apt=HELLO, dsc_sha256=info["dsc_sha256"]), d.root / "b",
                  downloads=d.downloads, log=log2)
    assert again["files"] == info["files"]
    assert "apt-" not in log2.read_text() and "not downloaded" in log2.read_text()


def test_apt_wrong_dsc_sha256_fails_before_anything_is_kept(d: SimpleNamespace) -> None:
    real = checksums_sha256(_showsrc())["hello_2.10-3.dsc"][0]
    wrong = "1" * 64
    with pytest.raises(SourceError) as exc:
        fetch(AptSource(apt=HELLO, dsc_sha256=wrong), d.root / "a", downloads=d.downloads,
              log=d.root / "log")
    assert wrong in exc.value.message and real in exc.value.message
    assert f"update dsc_sha256 in the recipe to {real}" in exc.value.hint
    assert _blobs(d.downloads) == []
    assert not (d.root / "a" / "hello_2.10.orig.tar.gz").exists()

    # a pin that does not match what is already stored fails too (no network needed)
    fetch(AptSource(apt=HELLO), d.root / "b", downloads=d.downloads, log=d.root / "log")
    with pytest.raises(SourceError, match="checksum mismatch"):
        fetch(AptSource(apt=HELLO, dsc_sha256=wrong), d.root / "c", downloads=d.downloads,
              log=d.root / "log")


def test_apt_unknown_version_lists_the_known_ones(d: SimpleNamespace) -> None:
    _showsrc()
    with pytest.raises(SourceError) as exc:
        fetch(AptSource(apt="hello=0.0-1"), d.root / "a", downloads=d.downloads,
              log=d.root / "log")
    assert "hello=0.0-1 is not in apt's index" in exc.value.message
    assert "2.10-3" in exc.value.message


def test_deb_member_is_fetched_and_verified(d: SimpleNamespace) -> None:
    _showsrc()
    log = d.root / "first.log"
    info = fetch(DebSource(deb=HELLO, member=COPYRIGHT), d.root / "a", downloads=d.downloads,
                 log=log)
    assert info["kind"] == "deb" and info["primary"] == "copyright"
    copyright_file = d.root / "a" / "copyright"
    assert "hello" in copyright_file.read_text().lower()
    assert info["files"] == [{"name": "copyright", "sha256": sha256_file(copyright_file)}]
    # the .deb's hash is the one in apt's index
    res = runner.run(["apt-cache", "show", HELLO], capture=True)
    assert info["deb_sha256"] in {s.get("SHA256") for s in parse_deb822(res.stdout)}

    log2 = d.root / "second.log"
    pinned = DebSource(deb=HELLO, member=COPYRIGHT, sha256=info["files"][0]["sha256"])
    fetch(pinned, d.root / "b", downloads=d.downloads, log=log2)
    assert "apt-" not in log2.read_text()
    assert (d.root / "b" / "copyright").read_bytes() == copyright_file.read_bytes()


def test_deb_wrong_member_sha256_fails(d: SimpleNamespace) -> None:
    _showsrc()
    wrong = "2" * 64
    with pytest.raises(SourceError) as exc:
        fetch(DebSource(deb=HELLO, member=COPYRIGHT, sha256=wrong), d.root / "a",
              downloads=d.downloads, log=d.root / "log")
    assert wrong in exc.value.message and "update sha256 in the recipe to" in exc.value.hint
    assert _blobs(d.downloads) == []


def test_deb_missing_member_is_named(d: SimpleNamespace) -> None:
    _showsrc()
    with pytest.raises(SourceError) as exc:
        fetch(DebSource(deb=HELLO, member="usr/share/doc/hello/COPYING"), d.root / "a",
              downloads=d.downloads, log=d.root / "log")
    assert "has no regular file usr/share/doc/hello/COPYING" in exc.value.message
    assert "dpkg-deb -c" in exc.value.hint
