"""The state directory: what xenforge records about its runs, apart from the cache's store -
node logs, VM run state (sessions of ``xenforge boot``/``test``) and probes (is KVM usable).

Location: ``$XENFORGE_STATE_DIR``, else ``<cache root>/state`` (so that a build with its own
``--cache-dir`` - a test, a CI shard - keeps its own records)::

    logs/<recipe>/<node>.log     the log of a node's last build (and build.log, verify.log)
    run/<name>/                  a VM session: serial log, QMP socket, overlay, state.json
    probes/accel.json            whether KVM works here (per host kernel and QEMU)
"""

from __future__ import annotations

import os
from pathlib import Path


def _safe(name: str) -> str:
    return name.replace(":", "-").replace("/", "_")


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_cache(cls, cache_root: Path) -> StateDir:
        env = os.environ.get("XENFORGE_STATE_DIR")
        return cls(Path(env).absolute() if env else cache_root / "state")

    def logs(self, recipe: str) -> Path:
        """The folder of a recipe's logs (created)."""
        path = self.root / "logs" / _safe(recipe)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def node_log(self, recipe: str, node: str) -> Path:
        return self.logs(recipe) / f"{_safe(node)}.log"

    def run_dir(self, name: str) -> Path:
        """Where a VM session of ``name`` keeps its files (created)."""
        path = self.root / "run" / _safe(name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def probes(self) -> Path:
        path = self.root / "probes"
        path.mkdir(parents=True, exist_ok=True)
        return path
