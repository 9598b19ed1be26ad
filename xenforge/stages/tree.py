"""The ``tree`` stage: unpack a source's primary archive and apply a patch series.

Inputs: ``source`` (a source node's output). Files: ``patches`` (optional; a folder with a
quilt ``series``). Output: ``tree/`` (the patched source; consumers read it, never write it)
and ``patches.json`` ([{name, strip, sha256}] of the applied patches, in order).
"""

from __future__ import annotations

import json
from typing import ClassVar

from pydantic import Field

from xenforge.lib.patches import apply_series, unlisted_patches
from xenforge.sources.fetch import primary_archive, unpack
from xenforge.stages.base import Stage, StageContext, StageOptions


class TreeOptions(StageOptions):
    strip_components: int = Field(1, ge=0, description="leading path parts to drop when "
                                                       "unpacking (1: the archive's top folder)")


class TreeStage(Stage):
    name: ClassVar[str] = "tree"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = TreeOptions
    build_env: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        opts: TreeOptions = ctx.options
        archive = primary_archive(ctx.input("source"))
        tree = ctx.out / "tree"
        ctx.note(f"unpacking {archive.name}")
        unpack(archive, tree, opts.strip_components, log=ctx.log)
        applied = []
        patches = ctx.file("patches")
        if patches is not None:
            for name in unlisted_patches(patches):
                ctx.note(f"warning: {patches / name} is not listed in series and is not applied")
            applied = apply_series(tree, patches, log=ctx.log, source=archive.name)
            ctx.note(f"applied {len(applied)} patch(es) from {patches}")
        (ctx.out / "patches.json").write_text(json.dumps(applied, indent=2) + "\n")
