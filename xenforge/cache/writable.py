"""Whether this process can write a cache, asked before a command that writes it (build,
``cache gc``, ``cache verify``) starts: a cache of another user, a read-only mount or a
chmod a-w folder is a user's mistake (exit 2, naming the cache and the fix), not an
internal error halfway through. Reading a cache (``plan``, ``cache ls``/``du``) needs none
of this."""

from __future__ import annotations

import os
import tempfile

from xenforge.cache.cache import Cache
from xenforge.core import diskfull
from xenforge.core.errors import InputError, XenforgeError


def check_writable(cache: Cache) -> None:
    """Make and remove a file in each folder of ``cache`` that a build or gc writes (not
    access(2): it says yes to root on a read-only bind mount); raise InputError if one
    cannot be made (XenforgeError when the disk is full: no bad input)."""
    for folder in (cache.objects_dir, cache.tmp_dir, cache.locks_dir, cache.refs_dir,
                   cache.work_dir, cache.scratch_dir):
        try:
            fd, name = tempfile.mkstemp(prefix=".xenforge-probe-", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            if diskfull.is_disk_full(exc):
                raise XenforgeError(diskfull.message(exc, [cache.root], cache.root),
                                    hint=diskfull.HINT) from exc
            raise InputError(f"cache directory {cache.root} is not writable "
                             f"({folder.name}/: {exc.strerror})",
                             hint="pass --cache-dir DIR (or set XENFORGE_CACHE_DIR) to a "
                             "folder you can write; reading it (plan, cache ls) works "
                             "as it is") from exc
