"""The store of committed node outputs, by node id, behind a small interface
(:class:`Store`): what the executor needs to find, use and commit objects. The local store
(:class:`LocalStore`) is a directory; a remote backend (an HTTP cache) can sit behind the
same interface.

Local layout::

    objects/ab/<id>/out/            a node's committed output (what stages read)
    objects/ab/<id>/manifest.json   what it was built from, when, how long it took
    objects/ab/<id>/log             the stage log of the build that made it

An object directory exists only once complete (rename is atomic), and its manifest is
written last, so a build killed at any moment leaves nothing a reader would trust. The
manifest lists every file of ``out/`` with its size, mtime and sha256 (:func:`file_records`);
an object is verified against it before it is used (:meth:`LocalStore.verify`: size and
mtime, the full hash when they differ or when asked), so a replaced, truncated or emptied
file is found and the object rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenforge.core.hashing import sha256_file
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
        #: node id -> (the manifest file's inode, size and mtime, whether it is one): a
        #: source tree's manifest is megabytes of JSON, and a build asks has() many times
        self._valid: dict[str, tuple[tuple[int, int, int, int], bool]] = {}

    def object_dir(self, node_id: str) -> Path:
        return self.objects_dir / node_id[:2] / node_id

    def has(self, node_id: str) -> bool:
        """The object exists with a manifest that is one (an emptied or damaged manifest is
        no object: it is rebuilt, and gc may take the directory). The manifest is read
        again only when its file changed (another inode, size or mtime)."""
        try:
            st = (self.object_dir(node_id) / "manifest.json").stat()
        except OSError:
            return False
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._valid.get(node_id)
        if known is not None and known[0] == key:
            return known[1]
        valid = self.read_manifest(node_id) is not None
        self._valid[node_id] = (key, valid)
        return valid

    def read_manifest(self, node_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.object_dir(node_id) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("id", node_id) == node_id else None

    def verify(self, node_id: str, *, full: bool = False) -> list[str]:
        """What is wrong with the object's files, compared with its manifest ([]: nothing).
        Cheap by default: sizes and mtimes, the sha256 of a file only when they differ;
        ``full`` hashes every file."""
        manifest = self.read_manifest(node_id)
        if manifest is None:
            return ["no manifest"]
        if "files" not in manifest:
            return []  # an object of an older xenforge: nothing to compare with
        records = manifest["files"]
        if not isinstance(records, dict):
            return ["the manifest's list of files is damaged"]
        version = manifest.get("records", 1)
        return verify_files(self.out(node_id), records, full=full,
                            version=version if isinstance(version, int) else 1)

    def out(self, node_id: str) -> Path:
        return self.object_dir(node_id) / "out"

    def manifest(self, node_id: str) -> dict[str, Any]:
        data = self.read_manifest(node_id)
        if data is None:
            raise FileNotFoundError(f"object {node_id} has no valid manifest")
        return data

    def touch(self, node_id: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.object_dir(node_id) / "manifest.json")

    def commit(self, node_id: str, staging: Path, manifest: dict[str, Any]) -> Path:
        """Write the manifest and move ``staging`` into the store atomically. The outputs
        reach the disk before the manifest does, and the rename before this returns, so
        not even a power loss leaves a manifest over empty files."""
        return self.adopt(node_id, staging, {**manifest, "records": RECORDS,
                                             "files": file_records(staging / "out")})

    def _place(self, node_id: str, staging: Path) -> Path:
        """Move a complete staging dir (manifest written) into the store."""
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

    def adopt(self, node_id: str, staging: Path, manifest: dict[str, Any]) -> Path:
        """Store ``staging`` as the object ``node_id`` with ``manifest`` as it is (its
        ``files`` already describe ``out/``: :meth:`commit`'s, or a remote object's that the
        caller verified), atomically."""
        _syncfs(staging)
        mf = staging / "manifest.json"
        tmp = mf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, mf)
        return self._place(node_id, staging)

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


#: the manifest's ``records`` version: 2 records every file's mode and owner and the
#: special files (a buildroot's /dev); objects of version 1 are checked as they were made
RECORDS = 2


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` that is not a directory (relative path, lstat): regular
    files, symlinks (to directories too) and special files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames
                                        if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), os.lstat(path)


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    return ("file" if stat.S_ISREG(mode) else "link" if stat.S_ISLNK(mode) else
            "chr" if stat.S_ISCHR(mode) else "blk" if stat.S_ISBLK(mode) else
            "fifo" if stat.S_ISFIFO(mode) else "sock")


def _special(st: os.stat_result) -> str:
    return f"{_kind(st)} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _owner(st: os.stat_result) -> dict[str, int]:
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def verify_files(out: Path, records: dict[str, Any], *, full: bool = False,
                 version: int = RECORDS) -> list[str]:
    """What is wrong with the entries below ``out`` compared with their manifest
    ``records`` ([]: nothing): missing, of another kind (a FIFO where a file was), resized,
    changed (sha256; only when size or mtime differ unless ``full``), another mode or
    owner, a changed symlink or device, an entry the manifest does not list. ``version``
    1: the records of an older xenforge (no modes, no special files)."""
    problems = []
    present = {rel for rel, st in _walk(out) if version >= 2 or _kind(st) in ("file", "link")}
    for rel, rec in records.items():
        if not isinstance(rec, dict):
            problems.append(f"{rel}: bad record")
            continue
        path = out / rel
        try:
            st = path.lstat()
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        kind = _kind(st)
        want = "link" if "link" in rec else "special" if "special" in rec else "file"
        if want == "link":
            if kind != "link" or os.readlink(path) != rec["link"]:
                problems.append(f"{rel}: the symlink changed")
            continue
        if want == "special":
            if kind in ("file", "link") or _special(st) != rec["special"]:
                problems.append(f"{rel}: not the special file {rec['special']}")
        elif kind != "file":
            problems.append(f"{rel}: a {kind}, not a regular file")
            continue
        elif st.st_size != rec.get("size"):
            problems.append(f"{rel}: {st.st_size} bytes, not {rec.get('size')}")
            continue
        elif (full or st.st_mtime_ns != rec.get("mtime_ns")) and \
                sha256_file(path) != rec.get("sha256"):
            problems.append(f"{rel}: its content changed (sha256)")
            continue
        if version >= 2 and _owner(st) != {k: rec.get(k) for k in ("mode", "uid", "gid")}:
            problems.append(f"{rel}: mode or owner changed ({oct(stat.S_IMODE(st.st_mode))} "
                            f"{st.st_uid}:{st.st_gid})")
    extra = sorted(present - set(records))
    if extra:
        problems.append(f"{extra[0]}: not in the manifest")
    return problems


def recorded_sha256(path: Path, record: object) -> str:
    """A file's sha256: its object manifest's ``record`` when the file is the one recorded
    there (size and mtime, as the store verifies), else hashed now."""
    st = path.stat()
    if isinstance(record, dict) and record.get("size") == st.st_size and \
            record.get("mtime_ns") == st.st_mtime_ns and isinstance(record.get("sha256"), str):
        return str(record["sha256"])
    return sha256_file(path)


def file_records(out: Path) -> dict[str, dict[str, Any]]:
    """Every entry of an object's ``out/``: a file's size, mtime, sha256, mode and owner; a
    symlink's target; a special file's kind and device, mode and owner."""
    records: dict[str, dict[str, Any]] = {}
    for rel, st in _walk(out):
        kind = _kind(st)
        if kind == "link":
            records[rel] = {"link": os.readlink(out / rel)}
        elif kind == "file":
            records[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                            "sha256": sha256_file(out / rel), **_owner(st)}
        else:
            records[rel] = {"special": _special(st), **_owner(st)}
    return records


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
