"""Export built artifacts to ``out/<recipe>/``: hard links (or copies) of the files each
stage declares, ``SHA256SUMS`` and ``manifest.json``, swapped in atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from xenforge.build.executor import NodeResult
from xenforge.cache import Cache
from xenforge.cache.store import recorded_sha256
from xenforge.core.errors import InputError
from xenforge.plan.graph import Graph
from xenforge.stages import get_stage

#: what an export's manifest says made it
GENERATOR = "xenforge"


@dataclass
class Release:
    """What an export holds besides the artifacts: SBOM, provenance, signed checksums."""

    recipe_file: Path | None = None
    signing_key: str | None = None
    started: float = 0.0  # time.time() the build started
    log: Path | None = None

    def write(self, folder: Path, graph: Graph, results: dict[str, NodeResult],
              artifacts: list[Artifact], cache: Cache | None = None) -> None:
        from xenforge.export.provenance import write_provenance
        from xenforge.export.release import sign, write_sums
        from xenforge.export.sbom import write_sbom

        epoch = max((n.env.epoch for n in graph.nodes.values() if n.env), default=0)
        release = next((n.env.release for n in graph.nodes.values() if n.env), "unknown")
        write_sbom(folder, graph, results, artifacts, recipe=graph.recipe, epoch=epoch,
                   release=release, cache=cache)
        write_provenance(folder, graph, results, artifacts, recipe=graph.recipe,
                         recipe_file=self.recipe_file, epoch=epoch, started=self.started,
                         finished=time.time())
        write_sums(folder, known={a.path.as_posix(): a.sha256 for a in artifacts})
        if self.signing_key:
            sign(folder, self.signing_key, log=self.log)


@dataclass
class Artifact:
    node: str
    path: Path  # relative to the export dir
    size: int
    sha256: str


def is_export(path: Path) -> bool:
    """Whether ``path`` is a folder xenforge exported (its manifest says so)."""
    try:
        data = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("generator") == GENERATOR or
                                       {"recipe", "nodes", "artifacts"} <= set(data))


def check_destination(dest: Path) -> None:
    """Refuse, before anything is built, an export folder that is not one of ours: only a
    previous export of xenforge is ever replaced (a user's folder of that name is not)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InputError(f"{dest} exists and is not a folder xenforge exported",
                         hint="pass another -o/--out, or move it away")
    if dest.is_dir() and any(dest.iterdir()) and not is_export(dest):
        raise InputError(f"{dest} holds files that are not an export of xenforge (no "
                         "manifest of ours); it is left untouched",
                         hint="pass another -o/--out, or move that folder away")
    parent = dest.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _can_make_folders(parent):
        raise InputError(f"cannot write the export folder {dest} ({parent} is not a writable "
                         "folder)", hint="pass a writable -o/--out")


def _can_make_folders(folder: Path) -> bool:
    """Whether a folder can be made in ``folder``, by making one: access(2) tells root yes
    for /proc, /sys or a read-only bind mount's folders, where the export's staging folder
    could not be made after the whole build."""
    try:
        probe = Path(tempfile.mkdtemp(prefix=".xenforge-probe-", dir=folder))
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.rmdir()
    return True


def export(graph: Graph, results: dict[str, NodeResult], cache: Cache, dest: Path,
           release: Release | None = None) -> list[Artifact]:
    """Publish every built node's artifacts under ``dest`` (replacing a previous export of
    xenforge there; anything else is refused by :func:`check_destination`), with
    ``manifest.json``, ``release``'s documents (SBOM, provenance), ``SHA256SUMS`` of every
    file and its signature."""
    check_destination(dest)
    staging = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    artifacts: list[Artifact] = []
    for node in graph.nodes.values():
        res = results.get(node.name)
        if res is None or res.out is None or not node.export:
            continue
        patterns = get_stage(node.stage).artifacts
        sub = Path(node.name.replace(":", "-"))
        records = (cache.store.read_manifest(node.id) or {}).get("files") or {}
        for pattern in patterns:
            for src in sorted(res.out.glob(pattern)):
                if not src.is_file():
                    continue
                rel = sub / src.relative_to(res.out)
                target = staging / rel
                if target.exists():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copy2(src, target)
                record = records.get(str(src.relative_to(res.out)))
                artifacts.append(Artifact(node.name, rel, src.stat().st_size,
                                          recorded_sha256(src, record)))
    manifest = {
        "generator": GENERATOR,
        "recipe": graph.recipe,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nodes": [{"name": n.name, "id": n.id, "stage": n.stage, "status":
                   results[n.name].status if n.name in results else "not run", "key": n.key()}
                  for n in graph.nodes.values()],
        "artifacts": [{"node": a.node, "path": a.path.as_posix(), "size": a.size,
                       "sha256": a.sha256} for a in artifacts],
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    try:  # the documents that let a user check it
        (release or Release()).write(staging, graph, results, artifacts, cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = dest.with_name(f".{dest.name}.old{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(staging, dest)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(old)
    return artifacts

