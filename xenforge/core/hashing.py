"""Content hashes: of files, of directory trees, of JSON values (canonical form)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def tree_hash(root: Path) -> str:
    """Hash a file or a directory tree: relative names, symlink targets, exec bits, contents.

    Timestamps, owners and other mode bits are ignored, so a fresh checkout hashes the same.
    Names are hashed as the bytes they are (a UTF-8 name as its UTF-8, one that is not
    UTF-8 as well).
    """
    if not root.is_dir():
        return sha256_file(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]):
            p = Path(dirpath, name)
            rel = (rel_dir / name).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(f"L {rel} {os.readlink(p)}\n"))
            elif stat.S_ISREG(st.st_mode):
                x = "x" if st.st_mode & 0o111 else "-"
                h.update(os.fsencode(f"F {rel} {x} {sha256_file(p)}\n"))
        for d in dirnames:
            if not Path(dirpath, d).is_symlink():
                h.update(os.fsencode(f"D {(rel_dir / d).as_posix()}\n"))
    return h.hexdigest()
