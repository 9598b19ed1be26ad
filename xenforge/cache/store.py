"""The store of committed node outputs, by node id, behind a small interface
(:class:`Store`): what the executor needs to find, use and commit objects. The local store
(:class:`LocalStore`) is a directory; a remote backend (an HTTP cache) can sit behind the
same interface.

Local layout::

    objects/ab/<id>/out/            a node's committed output (what stages read)
    objects/ab/<id>/manifest.json   what it was built from, when, how long it took
    objects/ab/<id>/log             the stage log of the build that made it

An object directory exists only once complete (rename is atomic), and its manifest is
written last, so a build killed at any moment leaves nothing a reader would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenforge.core.leftovers import libc, remove_tree


@dataclass
class Entry:
    id: str
    stage: str
    node: str
    size: int
    created: float
    used: float


class Store(ABC):
    """Committed node outputs by node id."""

    @abstractmethod
    def has(self, node_id: str) -> bool:
        """Whether the object exists (complete)."""

    @abstractmethod
    def out(self, node_id: str) -> Path:
        """The local path of an object's ``out/`` (what stages read; only when it exists)."""

    @abstractmethod
    def manifest(self, node_id: str) -> dict[str, Any]:
        """The object's manifest (what it was built from)."""

    @abstractmethod
    def commit(self, node_id: str, staging: Path, manifest: dict[str, Any]) -> Path:
        """Store ``staging`` (with ``out/``) as the object ``node_id``, atomically."""

    @abstractmethod
    def touch(self, node_id: str) -> None:
        """Record a use (least recently used objects go first in gc)."""


class LocalStore(Store):
    def __init__(self, objects: Path, tmp: Path) -> None:
        self.objects_dir = objects
        self.tmp_dir = tmp

    def object_dir(self, node_id: str) -> Path:
        return self.objects_dir / node_id[:2] / node_id

    def has(self, node_id: str) -> bool:
        return (self.object_dir(node_id) / "manifest.json").is_file()

    def out(self, node_id: str) -> Path:
        return self.object_dir(node_id) / "out"

    def manifest(self, node_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.object_dir(node_id) / "manifest.json").read_text())
        return data

    def touch(self, node_id: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.object_dir(node_id) / "manifest.json")

    def commit(self, node_id: str, staging: Path, manifest: dict[str, Any]) -> Path:
        """Write the manifest and move ``staging`` into the store atomically. The outputs
        reach the disk before the manifest does, and the rename before this returns, so
        not even a power loss leaves a manifest over empty files."""
        _syncfs(staging)
        mf = staging / "manifest.json"
        with open(mf.with_suffix(".tmp"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(mf.with_suffix(".tmp"), mf)
        target = self.object_dir(node_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.has(node_id):  # another process committed it meanwhile: keep theirs
            remove_tree(staging)
            return target
        if target.exists():  # incomplete (no manifest): never trusted, replace it
            doomed = self.tmp_dir / f"{node_id}.broken.{secrets.token_hex(4)}"
            os.rename(target, doomed)
            remove_tree(doomed)
        os.rename(staging, target)
        _fsync_dir(target.parent)
        return target

    def entries(self) -> list[Entry]:
        """Every object, least recently used first."""
        out = []
        for mf in self.objects_dir.glob("*/*/manifest.json"):
            try:
                m = json.loads(mf.read_text())
                st = mf.stat()
            except (OSError, ValueError):
                continue
            if not isinstance(m, dict):
                continue
            out.append(Entry(id=mf.parent.name, stage=str(m.get("stage", "?")),
                             node=str(m.get("node", "?")), size=dir_size(mf.parent),
                             created=m.get("finished", st.st_mtime), used=st.st_mtime))
        return sorted(out, key=lambda e: e.used)

    def remove(self, node_id: str) -> None:
        """Take an object out of the store atomically, then delete it (call under its lock)."""
        doomed = self.tmp_dir / f"{node_id}.gc.{secrets.token_hex(4)}"
        os.rename(self.object_dir(node_id), doomed)
        remove_tree(doomed)

    def objects(self) -> Iterator[Path]:
        return self.objects_dir.glob("*/*")


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (syncfs(2): all of a node's outputs at once)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc().syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
