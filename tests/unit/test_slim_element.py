"""The xenforge-slim element's root.d script, run as diskimage-builder runs it (outside the
chroot, with TARGET_ROOT) on a tree shaped like a fresh debootstrap: documentation, manual
pages and translations go, each package's copyright file, the locale aliases and the locale
definitions stay, and dpkg gets the same filters for every later package."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image_elements" / "xenforge-slim" / "root.d" / "50-xenforge-slim"

KEPT = ["usr/share/doc/bash/copyright", "usr/share/doc/libc6/copyright",
        "usr/share/locale/locale.alias", "usr/share/i18n/locales/en_US",
        "usr/bin/bash", "usr/share/zoneinfo/UTC"]
GONE = ["usr/share/doc/bash/changelog.Debian.gz", "usr/share/doc/bash/README",
        "usr/share/doc/libc6/NEWS.gz", "usr/share/man/man1/bash.1.gz",
        "usr/share/man/de/man1/ls.1.gz", "usr/share/info/bash.info.gz",
        "usr/share/locale/de/LC_MESSAGES/bash.mo", "usr/share/lintian/overrides/bash",
        "usr/share/help/C/foo/index.page"]


def test_slim_prunes_what_debootstrap_unpacked_and_filters_dpkg(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in KEPT + GONE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "usr/share/doc/libc-bin").symlink_to("libc6")  # dpkg's doc-dir symlink
    env = {**os.environ, "TARGET_ROOT": str(root)}
    done = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True,
                          check=True)
    assert f"{len(GONE) + 1} files debootstrap had unpacked removed" in done.stdout
    assert [rel for rel in KEPT if not (root / rel).is_file()] == []
    assert [rel for rel in GONE if (root / rel).exists()] == []
    assert not (root / "usr/share/doc/libc-bin").is_symlink()
    assert not (root / "usr/share/man").exists() or not any((root / "usr/share/man").iterdir())
    cfg = (root / "etc/dpkg/dpkg.cfg.d/xenforge-slim").read_text()
    assert "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n" in cfg
    assert "path-exclude=/usr/share/locale/*\n" in cfg


def test_slim_without_target_root_refuses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TARGET_ROOT"}
    done = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert not (tmp_path / "etc").exists()
