"""``python -m xenforge.build.reaper CACHE``: what a build that is killed cannot do itself.

Every build starts one (:func:`xenforge.core.run.watchdog`) and tells it ``done`` when it
ends, however it ends: then it exits. If the build dies without a word (SIGKILL, the OOM
killer), its commands keep running - they run in sessions of their own, so that a
terminal's Ctrl-C reaches xenforge alone - with their chroots, mounts and loop devices
below the node's work dir. The reaper then does at once what the next build of those nodes
or ``xenforge cache gc`` would do later (:meth:`xenforge.cache.Cache.clear_stale`): it
stops the dead build's commands, releases what they held and deletes the staging and work
dirs of the nodes nobody builds any more (each under the node's lock: a live build's are
never touched). What it did goes to its stdout (the build log).

It imports only the standard library until it has to act, so that telling it ``done``
costs a build nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m xenforge.build.reaper CACHE_DIR", file=sys.stderr)
        return 2
    said = sys.stdin.buffer.read()  # until the build says done, or dies
    if said.startswith(b"done"):
        return 0
    from xenforge.cache import Cache  # only now: the build died
    from xenforge.core.errors import XenforgeError

    try:
        stale = Cache(Path(args[0])).clear_stale()
    except (XenforgeError, OSError) as exc:
        _say(f"the build died; cleaning up after it failed: {exc}")
        return 1
    if stale.processes or stale.removed or stale.errors:
        _say("the build died; " + stale.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
