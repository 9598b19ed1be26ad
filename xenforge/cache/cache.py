"""The build cache: the store of node outputs plus what building them needs - a lock per
node, staging and work dirs, refs (what a recipe's node was last built as), named
persistent scratch dirs of stages, the compiler cache - and garbage collection.

Layout below the cache root (``~/.cache/xenforge`` by default)::

    objects/ab/<id>/                the store (see :mod:`xenforge.cache.store`)
    tmp/<id>.<pid>.<rand>/          outputs being built; renamed into objects/ on success
    locks/<id>.lock                 one build of a node at a time, across processes
    refs/<recipe>/<node>.json       the latest id built for a recipe's node (for "why rebuilt")
    work/<id>/                      scratch space of a running stage
    scratch/<name>/                 persistent scratch of stages: kbuild/ (incremental kernel
                                    builds), dib/ (diskimage-builder caches), downloads/
                                    (fetched sources by checksum)
    state/                          logs, VM sessions, probes (see :mod:`xenforge.cache.state`)
    ccache/                         the compiler cache, shared by all builds and all caches
                                    of the user ($XENFORGE_CCACHE_DIR overrides)

A build killed at any moment leaves at most a stale ``tmp/`` or ``work/`` entry, which is
never read; the killed build's watchdog (:mod:`xenforge.build.reaper`) removes it at once,
after stopping the commands the build left running, else the next build of that node
(under its lock) or ``gc`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenforge.cache.state import StateDir
from xenforge.cache.store import Entry, LocalStore, dir_size
from xenforge.core import diskfull
from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.files import file_lock, try_file_lock
from xenforge.core.leftovers import remove_tree


@dataclass
class Stale:
    """What :meth:`Cache.clear_stale` found of builds that died."""

    processes: list[int] = field(default_factory=list)  # stopped
    removed: list[str] = field(default_factory=list)  # "tmp/ID.PID.X", "work/ID"
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.processes:
            parts.append(f"stopped {len(self.processes)} process(es) it left running")
        if self.removed:
            parts.append(f"deleted {len(self.removed)} staging/work dir(s)")
        parts += self.errors
        return ", ".join(parts) or "nothing was left"


#: a ``tmp/`` entry made by a process whose pid it names: a staging dir (ID.PID.X) and a
#: remote cache's download (ID.fetch.PID.X) or upload archive (ID.push.PID.X.tar.zst)
_OWNED = re.compile(r"^[0-9a-f]+\.(?:fetch\.|push\.)?(\d+)\.")


def _in_use(name: str) -> bool:
    """Whether a ``tmp/`` or ``work/`` entry may still be in use without its node's lock
    held: one whose process is alive (an upload runs after the node's lock is released),
    or a dot-file (a probe of check_writable, gone in a moment)."""
    if name.startswith("."):
        return True
    owner = _OWNED.match(name)
    return owner is not None and runner.running(int(owner.group(1)))


def default_root() -> Path:
    env = os.environ.get("XENFORGE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xenforge"


#: persistent scratch dirs whose entries ``gc`` may empty: each ``NAME/ENTRY`` has a
#: ``NAME/ENTRY.lock`` held while a build uses it (kernel build dirs, DIB caches per image)
GC_SCRATCH = ("kbuild", "dib")


class Cache:
    def __init__(self, root: Path | None = None, *, ccache_dir: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.refs_dir = self.root / "refs"
        self.work_dir = self.root / "work"
        self.scratch_dir = self.root / "scratch"
        self.store = LocalStore(self.objects_dir, self.tmp_dir)
        self.state = StateDir.for_cache(self.root)
        # one compiler cache for every xenforge cache on this machine (a test's or CI shard's
        # own --cache-dir still compiles warm); ccache is content-addressed, so sharing is safe
        self.ccache_dir = (ccache_dir or Path(os.environ.get("XENFORGE_CCACHE_DIR")
                                              or default_root() / "ccache")).absolute()
        try:
            for d in (self.objects_dir, self.tmp_dir, self.locks_dir, self.refs_dir,
                      self.work_dir, self.scratch_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if diskfull.is_disk_full(exc):  # no bad input: a build failing (exit 1)
                raise XenforgeError(diskfull.message(exc, [self.root], self.root),
                                    hint=diskfull.HINT) from exc
            raise InputError(f"cannot use cache directory {self.root}: {exc.strerror}",
                             hint="pass --cache-dir DIR or set XENFORGE_CACHE_DIR") from exc
        try:
            self.ccache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot use the compiler cache {self.ccache_dir}: "
                             f"{exc.strerror}",
                             hint="set XENFORGE_CCACHE_DIR to a writable directory") from exc

    # -- the store ------------------------------------------------------------------------
    def object_dir(self, node_id: str) -> Path:
        return self.store.object_dir(node_id)

    def has(self, node_id: str) -> bool:
        return self.store.has(node_id)

    def out(self, node_id: str) -> Path:
        return self.store.out(node_id)

    def manifest(self, node_id: str) -> dict[str, Any]:
        return self.store.manifest(node_id)

    def touch(self, node_id: str) -> None:
        self.store.touch(node_id)

    def commit(self, node_id: str, staging: Path, manifest: dict[str, Any]) -> Path:
        return self.store.commit(node_id, staging, manifest)

    def entries(self) -> list[Entry]:
        return self.store.entries()

    def verified(self, node_id: str) -> list[str]:
        """Problems of a cached object (see LocalStore.verify); one with problems is taken
        out of the store (under the node's lock, by the caller) so that it is rebuilt."""
        return self.store.verify(node_id)

    def discard(self, node_id: str) -> None:
        """Take a corrupt object out of the store (call under the node's lock)."""
        if self.object_dir(node_id).exists():
            self.store.remove(node_id)

    # -- locks, staging, work, scratch ----------------------------------------------------
    @contextlib.contextmanager
    def lock(self, node_id: str) -> Iterator[None]:
        """Hold the node's lock: one build of a node at a time, across processes."""
        with file_lock(self.lock_file(node_id)):
            yield

    @contextlib.contextmanager
    def try_lock(self, node_id: str) -> Iterator[bool]:
        """The node's lock if nobody holds it (yields True), else yields False at once."""
        with try_file_lock(self.lock_file(node_id)) as free:
            yield free

    def lock_file(self, node_id: str) -> Path:
        return self.locks_dir.resolve() / f"{node_id}.lock"

    def orphaned(self, lock_file: str) -> bool:
        """True if ``lock_file`` is one of this cache's node locks and nobody holds it: the
        build that started a command marked with it is dead (see run.stop_orphans)."""
        path = Path(lock_file)
        if path.parent != self.locks_dir.resolve() or not path.name.endswith(".lock"):
            return False  # another cache's build, or not a build at all
        with self.try_lock(path.name.removesuffix(".lock")) as free:
            return free

    @contextlib.contextmanager
    def staging(self, node_id: str) -> Iterator[Path]:
        """A fresh staging dir for ``node_id`` (call under :meth:`lock`).

        Stale staging and work dirs of the same node (from a killed build) are removed
        first. The dir is deleted on any exception; :meth:`commit` moves it into place.
        """
        for stale in self.tmp_dir.glob(f"{node_id}.*"):
            remove_tree(stale)
        path = self.tmp_dir / f"{node_id}.{os.getpid()}.{secrets.token_hex(4)}"
        (path / "out").mkdir(parents=True)
        try:
            yield path
        finally:
            with contextlib.suppress(XenforgeError, OSError):  # the next build retries
                remove_tree(path)

    def work(self, node_id: str) -> Path:
        """A clean scratch dir for a node's build (call under :meth:`lock`)."""
        path = self.work_dir / node_id
        remove_tree(path)  # a killed build's: its mounts and loop devices released first
        path.mkdir(parents=True)
        return path

    def scratch(self, name: str) -> Path:
        """A named persistent scratch dir of stages (created)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad scratch dir name {name!r}")
        path = self.scratch_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- refs: what a recipe's node was last built as ---------------------------------
    def write_ref(self, recipe: str, node: str, record: dict[str, Any]) -> None:
        path = self.refs_dir / recipe / f"{node.replace('/', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
            os.rename(tmp, path)
        except OSError:  # a full disk: no half-written temp file left in refs/
            tmp.unlink(missing_ok=True)
            raise

    def read_ref(self, recipe: str, node: str) -> dict[str, Any] | None:
        path = self.refs_dir / recipe / f"{node.replace('/', '_')}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def referenced(self) -> set[str]:
        ids = set()
        for ref in self.refs_dir.glob("*/*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                ids.add(str(json.loads(ref.read_text())["id"]))
        return ids

    # -- garbage collection -----------------------------------------------------------
    def gc(self, *, max_bytes: int | None = None, older_than: float | None = None,
           dry_run: bool = False) -> list[Entry]:
        """Remove stale tmp/work dirs, then objects: those older than ``older_than`` seconds,
        then the least recently used until under ``max_bytes``. The latest build of every
        recipe's node (``refs/``) is always kept, even if the cache stays over the size."""
        removed: list[Entry] = []
        if not dry_run:
            stale = self.clear_stale()
            if stale.errors:
                raise XenforgeError(stale.errors[0], hint="free what it names (umount -R a "
                                    "mount left there), then run the command again")
        for obj in list(self.store.objects()):  # no (valid) manifest: no object, only debris
            with self.try_lock(obj.name) as free:
                if free and not dry_run and self.store.read_manifest(obj.name) is None:
                    self.store.remove(obj.name)
        entries = self.entries()
        keep = self.referenced()
        now = time.time()
        scratch = self.scratch_entries()
        total = sum(e.size for e in entries) + sum(e.size for e in scratch)
        # scratch dirs first (a kernel's incremental build dir: a speed-up, rebuilt on demand)
        for e in scratch:
            too_old = older_than is not None and now - e.used > older_than
            too_big = max_bytes is not None and total > max_bytes
            if (too_old or too_big) and self._remove_scratch(Path(e.id), dry_run):
                removed.append(e)
                total -= e.size
        for e in entries:  # least recently used first
            if e.id in keep:
                continue
            too_old = older_than is not None and now - e.used > older_than
            too_big = max_bytes is not None and total > max_bytes
            if (too_old or too_big) and (dry_run or self._remove(e)):
                removed.append(e)
                total -= e.size
        return removed

    def clear_stale(self) -> Stale:
        """What builds that died left: their commands still running are stopped (those
        marked with a node lock nobody holds, see run.stop_orphans), then the staging and
        work dirs of nodes nobody builds are deleted, mounts and loop devices below them
        released first. Each dir is deleted under its node's lock (a build that starts
        meanwhile waits, then makes a new one), so a live build's are never touched. For
        ``gc``, and right after a build is killed (:mod:`xenforge.build.reaper`)."""
        stale = Stale(processes=runner.stop_orphans(self.orphaned))
        for entry in [*self.tmp_dir.iterdir(), *self.work_dir.iterdir()]:
            if _in_use(entry.name):
                continue
            with self.try_lock(entry.name.split(".")[0]) as free:
                if not free:
                    continue
                try:
                    remove_tree(entry)
                except (XenforgeError, OSError) as exc:
                    stale.errors.append(exc.message if isinstance(exc, XenforgeError)
                                        else f"cannot delete {entry}: {exc.strerror}")
                else:
                    stale.removed.append(f"{entry.parent.name}/{entry.name}")
        return stale

    def scratch_entries(self) -> list[Entry]:
        """Entries of the gc-able scratch dirs (``scratch/kbuild/NAME``, each with NAME.lock),
        least recently used first; ``id`` is the entry's path."""
        out = []
        for d in (self.scratch_dir / dirname for dirname in GC_SCRATCH):
            for sub in d.iterdir() if d.is_dir() else ():
                if sub.is_dir():
                    st = sub.stat()
                    out.append(Entry(id=str(sub), stage="scratch", node=f"{d.name}/{sub.name}",
                                     size=dir_size(sub), created=st.st_ctime,
                                     used=st.st_mtime))
        return sorted(out, key=lambda e: e.used)

    @staticmethod
    def _remove_scratch(path: Path, dry_run: bool) -> bool:
        """Remove a scratch dir unless a build holds its lock; True if it is (would be) gone."""
        with try_file_lock(path.with_name(path.name + ".lock")) as free:
            if free and not dry_run:
                remove_tree(path)
            return free

    def _remove(self, e: Entry) -> bool:
        """Remove an object unless a build holds it, used it since ``e`` was listed, or
        made it a recipe's latest meanwhile; True if it is gone."""
        with self.try_lock(e.id) as free:
            target = self.object_dir(e.id)
            if not free or not target.exists() or e.id in self.referenced():
                return False
            with contextlib.suppress(OSError):
                if (target / "manifest.json").stat().st_mtime > e.used:
                    return False  # touched by a build that took it from the cache
            self.store.remove(e.id)
            return True
