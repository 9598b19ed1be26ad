"""Fetching pinned sources into a node's output, verified, through the download store; and
the helpers the tree stage uses to find and unpack what was fetched.

Downloads are kept in a content-addressed store (``<downloads>/sha256/<hash>``), so a second
fetch of the same pinned source needs no network. Nothing is ever moved into the store before
it verified; in-flight files are ``.part-*``/``.tmp-*`` names that no reader trusts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from xenforge.core import run as runner
from xenforge.core.errors import InputError, SourceError
from xenforge.core.files import note, write_json_atomic
from xenforge.core.hashing import tree_hash
from xenforge.sources.debian import fetch_apt, fetch_deb
from xenforge.sources.download import BACKOFF, TRIES, DownloadStore, download
from xenforge.sources.specs import (
    SOURCE_JSON,
    AptSource,
    DebSource,
    PathSource,
    SourceSpec,
    UrlSource,
)


def fetch(spec: SourceSpec, dest: Path, *, downloads: Path, log: Path,
          tries: int = TRIES, backoff: float = BACKOFF) -> dict[str, Any]:
    """Fetch and verify ``spec`` into ``dest``; write and return ``dest/source.json``.

    Raises SourceError (a download or verification failed) or InputError (a bad spec).
    """
    dest.mkdir(parents=True, exist_ok=True)
    store = DownloadStore(downloads)
    info: dict[str, Any]
    if isinstance(spec, UrlSource):
        info = _fetch_url(spec, dest, store, log, tries, backoff)
    elif isinstance(spec, PathSource):
        info = _fetch_path(spec, dest, log)
    elif isinstance(spec, AptSource):
        info = fetch_apt(spec, dest, store, log)
    elif isinstance(spec, DebSource):
        info = fetch_deb(spec, dest, store, log)
    else:  # pragma: no cover - the union is closed
        raise InputError(f"unknown source spec {spec!r}")
    write_json_atomic(dest / SOURCE_JSON, info)
    return info


def _fetch_url(spec: UrlSource, dest: Path, store: DownloadStore, log: Path, tries: int,
               backoff: float) -> dict[str, Any]:
    name = spec.target_name()
    if store.has(spec.sha256) and store.export(spec.sha256, dest / name):
        note(log, f"{spec.url}: sha256 {spec.sha256} found in {store.root}, not downloaded")
    else:
        download(spec.url, spec.sha256, store, log, tries=tries, backoff=backoff)
        if not store.export(spec.sha256, dest / name):
            raise SourceError(f"the stored download of {spec.url} changed while copying it",
                              hint=f"check the disk under {store.root}")
    return {"kind": spec.kind, "primary": name, "url": spec.url,
            "files": [{"name": name, "sha256": spec.sha256}]}


def _fetch_path(spec: PathSource, dest: Path, log: Path) -> dict[str, Any]:
    src = spec.path
    if not src.exists():
        raise InputError(f"source path {src} does not exist",
                         hint="check the `path:` of the source in the recipe")
    name = src.name
    if src.is_dir():
        shutil.copytree(src, dest / name, symlinks=True)
        digest = tree_hash(dest / name)
        kind = "dir"
    else:
        shutil.copyfile(src, dest / name)
        shutil.copymode(src, dest / name)
        digest = tree_hash(dest / name)
        kind = "file"
    note(log, f"copied {kind} {src} (sha256 {digest})")
    return {"kind": spec.kind, "primary": name, "type": kind,
            "files": [{"name": name, "sha256": digest}]}


# ---------------------------------------------------------------------------------------------
# helpers for the tree stage
# ---------------------------------------------------------------------------------------------


def read_source_json(source_dir: Path) -> dict[str, Any]:
    path = source_dir / SOURCE_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path} is missing or unreadable: {exc}",
                          hint="the input is not the output of a source node") from exc
    if not isinstance(data, dict) or not isinstance(data.get("primary"), str):
        raise SourceError(f"{path} has no 'primary' entry",
                          hint="the input is not the output of a source node")
    return data


def primary_archive(source_dir: Path) -> Path:
    """The main archive (or folder, for a ``path`` source) of a fetched source."""
    primary = source_dir / str(read_source_json(source_dir)["primary"])
    if not primary.exists():
        raise SourceError(f"{primary} is listed as primary in {source_dir / SOURCE_JSON} "
                          "but does not exist")
    return primary


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.zst",
                 ".tar.zstd", ".tar.lzma")


def is_tarball(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


def unpack(archive: Path, dest: Path, strip_components: int = 1, *,
           log: Path | None = None) -> None:
    """Unpack a tarball (any compression GNU tar knows) into ``dest``.

    A folder (from a ``path`` source) is copied instead, without stripping.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if archive.is_dir():
        shutil.copytree(archive, dest, symlinks=True, dirs_exist_ok=True)
        return
    if not is_tarball(archive):
        raise SourceError(f"{archive.name} is not a tar archive xenforge can unpack",
                          hint=f"use one of {', '.join(_TAR_SUFFIXES)}")
    runner.run(["tar", "-x", "-f", archive, "-C", dest, f"--strip-components={strip_components}",
                "--no-same-owner", "--no-same-permissions", "--delay-directory-restore"],
               log=log)
    if not any(dest.iterdir()):
        raise SourceError(f"unpacking {archive.name} with strip_components={strip_components} "
                          "gave an empty tree",
                          hint="lower strip_components (the archive has no top folder?)")

